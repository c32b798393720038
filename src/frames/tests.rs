use proptest::prelude::*;

use super::*;
use crate::redact::REDACTED;
use crate::wire::Stream;

fn seq_text(n: u32) -> String {
    (1..=n).map(|i| format!("{i}\n")).collect()
}

fn decode(frame: &str) -> Value {
    serde_json::from_str(frame).unwrap()
}

#[test]
fn every_frame_is_redacted() {
    let redactor = Redactor::new(["hunter2"]);
    let frames = encode(
        &OutboundMessage::error("password hunter2 leaked"),
        &redactor,
    );
    assert_eq!(decode(&frames[0])["error"], "password [REDACTED] leaked");
}

#[test]
fn oversized_assistant_text_is_split_not_lost() {
    let big = "é".repeat(800_000); // 1.6 MB of UTF-8
    let msg = OutboundMessage::AssistantMessage {
        text_blocks: vec![big.clone()],
    };
    let frames = encode(&msg, &Redactor::default());
    assert!(frames.len() > 1);
    let mut joined = String::new();
    for frame in &frames {
        assert!(frame.len() <= MAX_OUTBOUND_FRAME_BYTES);
        let v = decode(frame);
        assert_eq!(v["message_type"], "assistant_message");
        joined.push_str(v["text_blocks"][0].as_str().unwrap());
    }
    assert_eq!(joined, big);
}

#[test]
fn oversized_output_is_split_after_redaction() {
    let text = format!("{}SECRETVALUE{}", "a".repeat(65_530), "b".repeat(2_000_000));
    let msg = OutboundMessage::CommandOutputMessage {
        stream: Stream::Stdout,
        text,
        command: "x".into(),
    };
    let frames = encode(&msg, &Redactor::new(["SECRETVALUE"]));
    let joined: String = frames
        .iter()
        .map(|f| decode(f)["text"].as_str().unwrap().to_owned())
        .collect();
    assert!(!joined.contains("SECRET") && !joined.contains("VALUE"));
    assert!(joined.contains("[REDACTED]"));
}

#[test]
fn huge_command_strings_do_not_keep_output_frames_oversized() {
    let msg = OutboundMessage::CommandOutputMessage {
        stream: Stream::Stderr,
        text: "x".repeat(500_000),
        command: "c".repeat(900_000),
    };
    let frames = encode(&msg, &Redactor::default());
    let total: usize = frames
        .iter()
        .map(|f| {
            assert!(f.len() <= MAX_OUTBOUND_FRAME_BYTES);
            decode(f)["text"].as_str().unwrap().len()
        })
        .sum();
    assert_eq!(total, 500_000);
}

#[test]
fn oversized_result_becomes_a_clear_error() {
    let msg = OutboundMessage::ResultMessage {
        data: crate::wire::ResultData::Text {
            text: "x".repeat(2_000_000),
        },
        metadata: Default::default(),
    };
    let frames = encode(&msg, &Redactor::default());
    assert_eq!(frames.len(), 1);
    let v = decode(&frames[0]);
    assert_eq!(v["message_type"], "error_message");
    assert!(v["error"].as_str().unwrap().contains("frame limit"));
}

#[test]
fn water_level_caps_only_the_big_ones() {
    assert_eq!(water_level(&[10, 20], 30), usize::MAX);
    // 10 stays whole, the two big ones share the remaining 90.
    assert_eq!(water_level(&[100, 10, 200], 100), 45);
    assert_eq!(water_level(&[100, 100], 0), 0);
}

fn result(command: &str, stdout: String) -> CommandResult {
    CommandResult {
        command: command.into(),
        exit_code: 0,
        stdout,
    }
}

fn frame_len(results: &[CommandResult]) -> usize {
    serde_json::to_vec(&OutboundMessage::CommandExecutionResultMessage {
        results: results.to_vec(),
    })
    .unwrap()
    .len()
}

#[test]
fn envelope_and_sizes_match_real_serialization() {
    let results = vec![
        result("a", "x\u{1}\"".into()),
        result("b", String::new()),
        result("c", "é".into()),
    ];
    let computed = envelope_len(results.len()) + results.iter().map(serialized_len).sum::<usize>();
    assert_eq!(computed, frame_len(&results));
    assert_eq!(envelope_len(0), frame_len(&[]));
}

#[test]
fn fit_results_shrinks_a_3_mib_result_set() {
    let mut results: Vec<CommandResult> = (0..3)
        .map(|i| result(&format!("cmd {i}"), seq_text(140_000)))
        .collect();
    assert!(frame_len(&results) > 3 * 1000 * 1000);
    let original = results.clone();
    fit_results(&mut results, 1_000_000);
    let len = frame_len(&results);
    assert!(len <= 1_000_000, "{len}");
    assert!(len > 500_000, "shrank far more than needed: {len}");
    for (fitted, original) in results.iter().zip(&original) {
        let (head, _) = fitted.stdout.split_once("\n[runtimeuse: ").unwrap();
        assert!(original.stdout.starts_with(head));
        let tail = fitted
            .stdout
            .rsplit_once(" bytes of output omitted]\n")
            .unwrap()
            .1;
        assert!(original.stdout.ends_with(tail));
    }
}

#[test]
fn fit_results_leaves_small_results_alone() {
    let mut results = vec![result("echo hi", "hi\n".into())];
    fit_results(&mut results, 1_000_000);
    assert_eq!(results[0].stdout, "hi\n");
}

#[test]
fn fit_results_handles_escaping_and_many_commands() {
    // ~3.4 MB of JSON, mostly six-byte escapes, over 200 results.
    let mut results: Vec<CommandResult> = (0..200)
        .map(|i| result(&format!("c{i}"), "\u{1}é\n".repeat(1500 + 10 * i)))
        .collect();
    fit_results(&mut results, 1_000_000);
    assert!(frame_len(&results) <= 1_000_000);
}

#[test]
fn fit_results_terminates_when_commands_alone_are_too_big() {
    let mut results = vec![result(&"x".repeat(2_000_000), "out".repeat(1000))];
    fit_results(&mut results, 1_000_000);
    assert_eq!(results[0].stdout, "");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn fit_results_always_fits_or_empties(
        sizes in prop::collection::vec(0usize..2000, 1..8),
        max in 100usize..20_000,
    ) {
        let mut results: Vec<CommandResult> = sizes
            .iter()
            .map(|&n| result("c", "\u{1}a€".repeat(n)))
            .collect();
        fit_results(&mut results, max);
        let len = frame_len(&results);
        prop_assert!(len <= max || results.iter().all(|r| r.stdout.is_empty()), "{}", len);
    }
}

#[test]
fn results_that_redaction_grows_past_the_limit_are_fitted_not_refused() {
    // 1-char secrets become 10-byte markers: 200 KB of them grows to 2 MB.
    let msg = OutboundMessage::CommandExecutionResultMessage {
        results: vec![result("cat big", "x".repeat(200_000))],
    };
    let frames = encode(&msg, &Redactor::new(["x"]));
    assert_eq!(frames.len(), 1);
    assert!(frames[0].len() <= MAX_OUTBOUND_FRAME_BYTES);
    let v = decode(&frames[0]);
    assert_eq!(v["message_type"], "command_execution_result_message");
    let stdout = v["results"][0]["stdout"].as_str().unwrap();
    assert!(stdout.starts_with("[REDACTED]") && !stdout.contains('x'));
}

#[test]
fn a_cut_never_splits_a_redaction_marker() {
    // Redacted output of one-character secrets: markers everywhere, so any
    // naive cut position lands inside one.
    for keep in [0.1, 0.33, 0.5, 0.77] {
        for prefix in 0..REDACTED.len() {
            let mut text = "x".repeat(prefix) + &format!("{REDACTED}.").repeat(500);
            cut_middle(&mut text, keep);
            let (head, rest) = text.split_once("[runtimeuse:").expect("cut");
            let tail = &rest[rest.find(']').unwrap() + 1..];
            for side in [head, tail] {
                let leftover = side.replace(REDACTED, "");
                assert!(
                    leftover.chars().all(|c| matches!(c, 'x' | '.' | '\n')),
                    "a marker was cut: {side:?}"
                );
            }
        }
    }
}
