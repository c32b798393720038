//! `InboundMessage::parse` on arbitrary text: it must never panic, and
//! parsing the same text twice must give the same result (message or error).
//! An invocation's output format, when usable, is always the
//! `{"type":"json_schema","schema":{..}}` wrapper handlers expect.

#![no_main]

use libfuzzer_sys::fuzz_target;
use runtimeuse::fuzzing::InboundMessage;

fuzz_target!(|data: &[u8]| {
    // The server only ever hands `parse` a text frame, which is UTF-8.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let first = InboundMessage::parse(text);
    let again = InboundMessage::parse(text);
    assert_eq!(first, again, "parse is not deterministic on {text:?}");
    match &first {
        Ok(message) => {
            // The accessors the session uses on a parsed message.
            let _ = message.source_id();
            if let InboundMessage::InvocationMessage(m) = message {
                let _ = m.artifacts().all_dirs();
                // What the handler is given: always the wrapper, whichever
                // form (wrapped or bare schema) the client sent.
                match m.output_format() {
                    Ok(Some(format)) => {
                        assert_eq!(format["type"], "json_schema", "{format}");
                        assert!(format["schema"].is_object(), "{format}");
                    }
                    Ok(None) => assert!(m.output_format_json_schema_str.is_none()),
                    Err(e) => {
                        let _ = e.to_string();
                    }
                }
            }
            if let InboundMessage::CommandExecutionMessage(m) = message {
                let _ = m.artifacts().all_dirs();
            }
        }
        // The error text is what the client is sent.
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
