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

/// An invocation asking for `format` (a JSON text) as its output format.
fn with_output_format(format: &str) -> InvocationMessage {
    let frame = serde_json::json!({
        "message_type": "invocation_message",
        "user_prompt": "u",
        "output_format_json_schema_str": format,
    });
    match InboundMessage::parse(&frame.to_string()).unwrap() {
        InboundMessage::InvocationMessage(m) => *m,
        other => panic!("wrong variant: {other:?}"),
    }
}

#[test]
fn bare_and_wrapped_schemas_reach_the_handler_alike() {
    let wrapped = with_output_format(r#"{"type":"json_schema","schema":{"type":"object"}}"#);
    let bare = with_output_format(r#"{"type":"object"}"#);
    let expected = serde_json::json!({"type": "json_schema", "schema": {"type": "object"}});
    assert_eq!(wrapped.output_format().unwrap(), Some(expected.clone()));
    assert_eq!(bare.output_format().unwrap(), Some(expected));
    // A wrapper without its `type` is still the wrapper, and gets one.
    let untyped = with_output_format(r#"{"schema":{"type":"object"}}"#);
    assert_eq!(
        untyped.output_format().unwrap().unwrap()["type"],
        "json_schema"
    );
    // An empty object is a (permissive) bare schema.
    let empty = with_output_format("{}");
    assert_eq!(
        empty.output_format().unwrap().unwrap()["schema"],
        serde_json::json!({})
    );
}

#[test]
fn unusable_output_formats_say_why() {
    for (format, why) in [
        ("{", "EOF"),
        ("[]", "expected a JSON object"),
        (r#"{"type":"json_schema"}"#, "\"schema\" object"),
        (r#"{"type":"json_schema","schema":3}"#, "\"schema\" object"),
        (r#"{"schema":3}"#, "\"schema\" object"),
    ] {
        let err = with_output_format(format)
            .output_format()
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("Invalid output_format_json_schema_str: ") && err.contains(why),
            "{format}: {err}"
        );
    }
}

#[test]
fn out_of_range_numbers_in_unknown_fields_are_ignored() {
    let frames = [
        r#"{"message_type":"command_execution_message","commands":[{"command":"true","extra":1e400}],"x":1e400}"#,
        r#"{"message_type":"invocation_message","user_prompt":"u","x":{"deep":[-1e400]}}"#,
        r#"{"message_type":"artifact_upload_response_message","filepath":"/f","presigned_url":"http://h/","x":1e400}"#,
        r#"{"message_type":"cancel_message","x":1e400}"#,
        r#"{"x":1e400,"message_type":"end_session_message"}"#,
    ];
    for frame in frames {
        assert!(InboundMessage::parse(frame).is_ok(), "{frame}");
    }
}

#[test]
fn frame_shape_errors_keep_their_kind() {
    assert!(matches!(
        InboundMessage::parse(r#"{"message_type":"cancel_message"} x"#),
        Err(ParseError::NotJson(_))
    ));
    for frame in [
        "null",
        "42",
        "[1, 2, 3]",
        r#"["cancel_message"]"#,
        r#"{"message_type":null}"#,
        r#"{"message_type":[1]}"#,
    ] {
        assert_eq!(
            InboundMessage::parse(frame),
            Err(ParseError::NoMessageType),
            "{frame}"
        );
    }
}
