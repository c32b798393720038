use super::*;

fn embedded_json(path: &str) -> serde_json::Value {
    let file = AGENT_HANDLERS
        .file(path)
        .unwrap_or_else(|| panic!("{path} is not embedded"));
    serde_json::from_slice(file.contents).unwrap()
}

#[test]
fn each_agent_is_embedded_with_its_lockfile_and_the_node_sdk() {
    for agent in NODE_AGENTS {
        let dir = format!("handlers/{}", agent.name);
        assert!(AGENT_HANDLERS.file(&format!("{dir}/{ENTRY}")).is_some());
        let package = embedded_json(&format!("{dir}/package.json"));
        let lock = embedded_json(&format!("{dir}/package-lock.json"));
        // `npm ci` refuses a lockfile out of step with package.json.
        assert_eq!(
            lock["packages"][""]["dependencies"], package["dependencies"],
            "{dir}: regenerate package-lock.json (npm install --package-lock-only)"
        );
        assert_eq!(
            package["dependencies"]["runtimeuse-handler"], "file:../sdk/node",
            "{dir}"
        );
        // The start-up check and the package say the same.
        let engines = format!(">={}", agent.min_node_major);
        assert_eq!(package["engines"]["node"], engines.as_str(), "{dir}");
    }
    let sdk = embedded_json("handlers/sdk/node/package.json");
    assert_eq!(sdk["name"], "runtimeuse-handler");
}

#[test]
fn nothing_installed_or_hidden_is_embedded() {
    for file in AGENT_HANDLERS.files {
        assert!(
            !file
                .path
                .split('/')
                .any(|part| part == "node_modules" || part.starts_with('.')),
            "{}",
            file.path
        );
    }
}

#[test]
fn node_versions() {
    assert_eq!(node_major("v20.20.2"), Some(20));
    assert_eq!(node_major("v18.0.0"), Some(18));
    assert_eq!(node_major("20.1.0"), None);
    assert_eq!(node_major(""), None);
    assert_eq!(node_agent("claude").map(|a| a.min_node_major), Some(18));
    assert_eq!(node_agent("echo"), None);
}

#[test]
fn node_errors_say_what_to_install_and_what_needs_no_node() {
    let errors = [
        AgentSetupError::NoNode {
            agent: "openai",
            min: 20,
        },
        AgentSetupError::OldNode {
            agent: "openai",
            min: 20,
            node: "/usr/bin/node".into(),
            found: "version v16.20.0".into(),
        },
        AgentSetupError::NoNpm { agent: "claude" },
    ];
    for error in errors {
        let text = error.to_string();
        assert!(
            text.contains("--agent echo and --handler PATH need no Node"),
            "{text}"
        );
        assert!(text.contains("install"), "{text}");
    }
}
