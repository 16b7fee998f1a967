//! How one HTTP call is classified for the history: a 2xx is `ok`; a 4xx or a
//! connection never made is `fail`; a timeout, a reset or a 5xx is `info`
//! (the write may have happened). Served by a tiny canned server on loopback.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use truce_torture::history::Kind;
use truce_torture::http::{Http, Outcome};
use truce_torture::workloads::kind_of;

/// What the canned server does with each connection.
#[derive(Clone, Copy)]
enum Answer {
    Status(u16, &'static str),
    Hang,
    Reset,
}

/// Serves `answer` on a fresh loopback port; returns its base URL.
async fn serve(answer: Answer) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                match answer {
                    Answer::Status(status, body) => {
                        let response = format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = stream.write_all(response.as_bytes()).await;
                    }
                    Answer::Hang => tokio::time::sleep(Duration::from_secs(5)).await,
                    Answer::Reset => drop(stream),
                }
            });
        }
    });
    url
}

async fn outcome(answer: Answer) -> Outcome {
    let http = Http::new(&serve(answer).await, Duration::from_millis(300));
    http.get("/v1/c/x/y").await
}

#[tokio::test]
async fn each_answer_becomes_the_right_history_kind() {
    let ok = outcome(Answer::Status(200, r#"{"_version": 1}"#)).await;
    assert_eq!(kind_of(&ok), Kind::Ok, "{ok:?}");

    let conflict = outcome(Answer::Status(409, r#"{"error": "conflict", "current": null}"#)).await;
    assert_eq!(kind_of(&conflict), Kind::Fail, "{conflict:?}");
    assert!(conflict.is_conflict());

    let missing = outcome(Answer::Status(404, r#"{"error": "not_found"}"#)).await;
    assert!(missing.is_not_found(), "{missing:?}");

    for (status, body) in [
        (503, r#"{"error": "unavailable"}"#),
        (503, r#"{"error": "timeout"}"#),
        (500, r#"{"error": "storage_error"}"#),
    ] {
        let unknown = outcome(Answer::Status(status, body)).await;
        assert_eq!(kind_of(&unknown), Kind::Info, "{status} {body}: {unknown:?}");
    }
    let unavailable = outcome(Answer::Status(503, r#"{"error": "unavailable"}"#)).await;
    assert_eq!(unavailable.error().as_deref(), Some("503 unavailable"));

    let timeout = outcome(Answer::Hang).await;
    assert_eq!(kind_of(&timeout), Kind::Info, "{timeout:?}");
    let reset = outcome(Answer::Reset).await;
    assert_eq!(kind_of(&reset), Kind::Info, "{reset:?}");
}

#[tokio::test]
async fn a_connection_never_made_is_a_failure() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let http = Http::new(&format!("http://127.0.0.1:{port}"), Duration::from_millis(300));
    let refused = http.get("/healthz").await;
    assert_eq!(kind_of(&refused), Kind::Fail, "{refused:?}");
}
