//! The story of seed 003 (counter_culture #263): subscribers confirming and
//! emails being opened all update one summary row per campaign
//! (`campaign_metrics`), and in MySQL those updates deadlocked. Here the
//! counters are declared once with `set_config` and kept by the server:
//! `confirmed` / `unconfirmed` in the same commit as each subscriber write
//! (`in_commit`), `email_opens` after the commit through a durable outbox
//! (`after_commit`, the wish). Everything runs at once; nothing
//! conflicts; the counts are exact. Then a corrupted count is recounted.
//!
//! Run against a server: `cargo run -p truce-client --example seed003_counters -- http://127.0.0.1:7070`.
//! Exits non-zero when anything turns out other than the story says.

use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use truce_client::{Client, ClientError, Precondition, Transaction, WriteResult};

const SUBSCRIBERS: usize = 20;
/// How many of them confirm their email address.
const CONFIRMING: usize = 12;
const OPENS: usize = 30;

#[tokio::main]
async fn main() -> ExitCode {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:7070".to_string());
    match run(&url).await {
        Ok(()) => {
            println!("\nOK: every counter equals the truth, and nothing conflicted.");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("\nFAILED: {message}");
            ExitCode::FAILURE
        }
    }
}

fn ensure(condition: bool, what: String) -> Result<(), String> {
    if condition { Ok(()) } else { Err(what) }
}

fn err(e: ClientError) -> String {
    e.to_string()
}

/// A write that must apply: a conflict is a failure of the story.
fn applied(result: Result<WriteResult, ClientError>, what: &str) -> Result<(), String> {
    match result.map_err(err)? {
        Ok(_) => Ok(()),
        Err(conflict) => Err(format!("{what} conflicted ({conflict}); counters never conflict")),
    }
}

/// A field of the campaign's summary row (0 when absent).
async fn metric(client: &Client, campaign: &str, field: &str) -> Result<i64, String> {
    let row = client.get("campaign_metrics", campaign).await.map_err(err)?;
    Ok(row
        .and_then(|d| d.body.get(field).and_then(Value::as_i64))
        .unwrap_or(0))
}

async fn run(url: &str) -> Result<(), String> {
    let client = Client::builder(url).source("seed003").build().map_err(err)?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    // A campaign of its own, so the example can run again on the same server.
    let campaign = format!("campaign-{nanos}");

    println!("== counters, declared once");
    let counter = |name: &str, filter: Value, field: &str, mode: &str| {
        json!({"name": name, "group_by": "campaign_id", "where": filter,
               "target": {"c": "campaign_metrics", "field": field}, "mode": mode})
    };
    let subscribers = json!({"counters": [
        counter("confirmed", json!({"status": "confirmed"}), "confirmed_subscribers_count", "in_commit"),
        counter("unconfirmed", json!({"status": {"$ne": "confirmed"}}), "unconfirmed_subscribers_count", "in_commit"),
    ]});
    let answer = client
        .set_config("subscribers", &subscribers)
        .await
        .map_err(err)?;
    println!(
        "subscribers/_config → {} counters",
        answer["counters"].as_array().map_or(0, Vec::len)
    );
    let opens =
        json!({"counters": [counter("email_opens", Value::Null, "email_opens_count", "after_commit")]});
    client.set_config("opens", &opens).await.map_err(err)?;
    println!("opens/_config       → email_opens, after_commit");
    let stored = client.config("opens").await.map_err(err)?;
    ensure(
        stored["counters"][0]["mode"] == "after_commit",
        format!("GET opens/_config: {stored}"),
    )?;

    println!("\n== {SUBSCRIBERS} subscribers sign up to {campaign}");
    let mut signup = Transaction::new();
    for i in 0..SUBSCRIBERS {
        let doc = json!({"email": format!("user{i}@host.com"), "campaign_id": campaign, "status": "pending"});
        signup = signup.put(
            "subscribers",
            &format!("{campaign}-sub-{i}"),
            doc,
            Precondition::Absent,
        );
    }
    client
        .transaction(&signup)
        .await
        .map_err(err)?
        .map_err(|c| format!("sign-up transaction conflicted: {c:?}"))?;
    let unconfirmed = metric(&client, &campaign, "unconfirmed_subscribers_count").await?;
    println!("unconfirmed_subscribers_count = {unconfirmed}");
    ensure(
        unconfirmed == SUBSCRIBERS as i64,
        format!("expected {SUBSCRIBERS} unconfirmed in the same commit"),
    )?;

    println!("\n== at once: {CONFIRMING} confirm, {OPENS} emails are opened (all on one summary row)");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..CONFIRMING {
        let (client, id) = (client.clone(), format!("{campaign}-sub-{i}"));
        tasks.push(tokio::spawn(async move {
            let update = json!({"$set": {"status": "confirmed"}, "$currentDate": {"confirmed_at": true}});
            applied(
                client.patch("subscribers", &id, update, Precondition::Any).await,
                "a confirmation",
            )
        }));
    }
    for i in 0..OPENS {
        let (client, campaign) = (client.clone(), campaign.clone());
        tasks.push(tokio::spawn(async move {
            let open = json!({"campaign_id": campaign, "subscriber_id": format!("{campaign}-sub-{}", i % SUBSCRIBERS)});
            let id = format!("{campaign}-open-{i}");
            applied(client.put("opens", &id, open, Precondition::Absent).await, "an open")
        }));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    println!(
        "{} writes in {:?}, no conflict",
        CONFIRMING + OPENS,
        started.elapsed()
    );

    let confirmed = metric(&client, &campaign, "confirmed_subscribers_count").await?;
    let unconfirmed = metric(&client, &campaign, "unconfirmed_subscribers_count").await?;
    println!(
        "in_commit:    confirmed = {confirmed}, unconfirmed = {unconfirmed} (exact as soon as the writes answered)"
    );
    ensure(
        (confirmed, unconfirmed) == (CONFIRMING as i64, (SUBSCRIBERS - CONFIRMING) as i64),
        format!(
            "expected {CONFIRMING} confirmed and {} unconfirmed",
            SUBSCRIBERS - CONFIRMING
        ),
    )?;
    // after_commit: applied moments later; the outbox says when all are in.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let outbox = client.outbox().await.map_err(err)?;
        if outbox.entries == 0 {
            break;
        }
        ensure(
            Instant::now() < deadline,
            format!("the outbox did not drain: {outbox:?}"),
        )?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let opened = metric(&client, &campaign, "email_opens_count").await?;
    println!("after_commit: email_opens_count = {opened} (once the outbox is empty)");
    ensure(opened == OPENS as i64, format!("expected {OPENS} opens"))?;

    println!("\n== someone writes the summary row by hand; a recount fixes it");
    let corrupt = json!({"$inc": {"confirmed_subscribers_count": 5}});
    applied(
        client
            .patch("campaign_metrics", &campaign, corrupt, Precondition::Any)
            .await,
        "the corruption",
    )?;
    let report = client.recount("subscribers", "confirmed").await.map_err(err)?;
    let fix = report
        .fixed
        .iter()
        .find(|f| f.group == campaign)
        .ok_or_else(|| format!("the recount did not fix {campaign}: {report:?}"))?;
    println!(
        "recount: checked {} groups, fixed {campaign}: was {}, now {}",
        report.checked, fix.was, fix.now
    );
    ensure(
        fix.was == json!(CONFIRMING + 5) && fix.now == json!(CONFIRMING),
        format!("unexpected fix {fix:?}"),
    )?;
    let confirmed = metric(&client, &campaign, "confirmed_subscribers_count").await?;
    ensure(
        confirmed == CONFIRMING as i64,
        format!("after the recount: {confirmed}"),
    )?;
    Ok(())
}
