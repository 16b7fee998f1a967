//! The README's HTTP quick start, pasted into a shell against a real server:
//! the documentation is only right if this passes.

mod common;

#[test]
fn the_readme_http_quick_start_works_when_pasted() {
    let server = common::Server::start();
    let Some(lines) = common::paste_readme_block("## HTTP quick start", &server) else {
        return;
    };
    let answers: Vec<serde_json::Value> = lines
        .iter()
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
