use super::*;

#[test]
fn nulls_are_absent_fields() {
    let msg = InboundMessage::parse(
        r#"{"message_type":"invocation_message","source_id":null,"system_prompt":"s",
            "user_prompt":"u","model":"m","agent_env":null,"secrets_to_redact":null,
            "output_format_json_schema_str":null,"artifacts_dirs":null,"artifacts_dir":null,
            "artifacts_ignore_content":null,"pre_agent_invocation_commands":null,
            "post_agent_invocation_commands":null,"pre_agent_downloadables":null}"#,
    )
    .unwrap();
    let InboundMessage::InvocationMessage(inv) = msg else {
        panic!("wrong variant")
    };
    assert_eq!(inv.user_prompt, "u");
    assert!(inv.secrets_to_redact.is_empty());
    assert!(inv.artifacts().all_dirs().is_empty());
}

#[test]
fn command_env_null_is_none() {
    let msg = InboundMessage::parse(
        r#"{"message_type":"command_execution_message","secrets_to_redact":[],
            "commands":[{"command":"true","cwd":null,"env":null}]}"#,
    )
    .unwrap();
    let InboundMessage::CommandExecutionMessage(m) = msg else {
        panic!("wrong variant")
    };
    assert_eq!(m.commands[0].env, None);
}

#[test]
fn errors_name_the_problem() {
    assert!(matches!(
        InboundMessage::parse("{"),
        Err(ParseError::NotJson(_))
    ));
    assert_eq!(InboundMessage::parse("[1]"), Err(ParseError::NoMessageType));
    assert_eq!(
        InboundMessage::parse(r#"{"message_type":"bogus"}"#),
        Err(ParseError::UnknownType("bogus".into()))
    );
    let err = InboundMessage::parse(r#"{"message_type":"command_execution_message"}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing field `commands`"), "{err}");
}

#[test]
fn errors_name_the_field_and_never_echo_huge_input() {
    let err = InboundMessage::parse(
        r#"{"message_type":"invocation_message","user_prompt":"u","system_prompt":5}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("system_prompt"), "{err}");
    let huge = format!(r#"{{"message_type":"{}"}}"#, "x".repeat(1_000_000));
    let err = InboundMessage::parse(&huge).unwrap_err().to_string();
    assert!(err.len() < 400, "{}", err.len());
    let err = InboundMessage::parse(&format!(
        r#"{{"message_type":"command_execution_message","commands":[{{"command":"{}","env":{{"A":1}}}}]}}"#,
        "y".repeat(1_000_000)
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.len() < 400 && err.contains("commands[0].env.A"),
        "{err}"
    );
}

#[test]
fn legacy_artifacts_dir_joins_the_list() {
    let opts = ArtifactOptions {
        artifacts_dirs: vec!["/a".into()],
        artifacts_dir: Some("/b".into()),
        artifacts_ignore_content: None,
    };
    assert_eq!(opts.all_dirs(), vec!["/a".to_owned(), "/b".to_owned()]);
}

#[test]
fn redaction_never_touches_protocol_names() {
    let redactor = Redactor::new(["message", "text", "blocks", "type", "s3cret"]);
    let msg = OutboundMessage::AssistantMessage {
        text_blocks: vec!["a text message with s3cret".into()],
    }
    .redacted(&redactor);
    let v = serde_json::to_value(msg).unwrap();
    assert_eq!(v["message_type"], "assistant_message");
    assert_eq!(
        v["text_blocks"][0],
        "a [REDACTED] [REDACTED] with [REDACTED]"
    );
    let mut out = Map::new();
    out.insert("s3cret-key".into(), Value::String("s3cret".into()));
    let v = serde_json::to_value(
        OutboundMessage::ResultMessage {
            data: ResultData::StructuredOutput {
                structured_output: out,
            },
            metadata: Map::new(),
        }
        .redacted(&redactor),
    )
    .unwrap();
    assert_eq!(v["data"]["type"], "structured_output");
    assert_eq!(
        v["data"]["structured_output"],
        serde_json::json!({"[REDACTED]-key": "[REDACTED]"})
    );
}

#[test]
fn outbound_shapes_match_the_client() {
    let v = serde_json::to_value(OutboundMessage::ResultMessage {
        data: ResultData::Text { text: "hi".into() },
        metadata: Map::new(),
    })
    .unwrap();
    assert_eq!(
        v,
        serde_json::json!({"message_type":"result_message",
            "data":{"type":"text","text":"hi"},"metadata":{}})
    );
    let v = serde_json::to_value(OutboundMessage::EndSessionConfirmMessage).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"message_type":"end_session_confirm_message"})
    );
}
