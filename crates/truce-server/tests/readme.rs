//! The README's HTTP quick start, pasted into a shell against a real server:
//! the documentation is only right if this passes.

mod common;

use std::process::Command;

#[test]
fn the_readme_http_quick_start_works_when_pasted() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("curl is not installed; skipping the README check");
        return;
    }
    let server = common::Server::start();
    let script =
        common::readme_sh_block("## HTTP quick start").replace("localhost:7070", &server.addr.to_string());
    // Every command's answer on its own line, so the checks below can read them.
    let script = script.replace("curl -s ", "echo; curl -s ");
    let output = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .output()
        .expect("bash");
    assert!(
        output.status.success(),
        "the quick start failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answers: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    let expected: [(&str, &str); 9] = [
        ("created", "true"),
        ("reason", "\"already_exists\""),
        ("version", "2"),
        ("reason", "\"version_mismatch\""),
        ("version", "3"),
        ("version", "4"),
        ("created", "true"),
        ("seq", ""),
        ("last_seq", ""),
    ];
    assert_eq!(
        answers.len(),
        expected.len(),
        "one answer per command: {answers:#?}"
    );
    for (answer, (field, value)) in answers.iter().zip(expected) {
        let got = answer
            .get(field)
            .unwrap_or_else(|| panic!("no {field} in {answer}"));
        if !value.is_empty() {
            assert_eq!(got.to_string(), value, "{field} of {answer}");
        }
    }
    let results = &answers[7]["results"];
    assert_eq!(results[0]["doc"]["stock"], 6, "5, then +1");
    assert_eq!(results[1]["created"], true);
    assert_eq!(results[2]["doc"]["count"], 1);
    let feed = answers[8]["results"].as_array().expect("results");
    assert_eq!(feed.len(), 2, "item-1 at its latest change, and item-2");
}
