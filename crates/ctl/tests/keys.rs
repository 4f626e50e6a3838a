//! `accrualctl keys new`: a fresh key and the configuration entry that holds only its digest.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn keys_new(client: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_accrualctl"))
        .args(["keys", "new", client])
        .output()
        .unwrap()
}

#[test]
fn keys_new_prints_a_fresh_key_and_an_entry_with_only_its_digest() {
    let out = keys_new("crm-eu");
    assert!(out.status.success(), "{out:?}");
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = printed["key"].as_str().unwrap();
    let entry = printed["config_entry"].as_str().unwrap();

    assert_eq!(printed["client"], "crm-eu");
    assert!(key.starts_with("acr_") && key.len() == 68, "{key}");
    assert!(!entry.contains(key));
    let hex = entry.strip_prefix("crm-eu:sha256:").unwrap();
    assert_eq!(
        accrual_core::api_key::parse_hex(hex),
        Some(accrual_core::api_key::digest(key))
    );
    let again: serde_json::Value = serde_json::from_slice(&keys_new("crm-eu").stdout).unwrap();
    assert_ne!(again["key"], printed["key"], "every key is new");
}

#[test]
fn keys_new_refuses_a_client_id_the_sender_would_refuse() {
    let out = keys_new("crm eu");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("client id"));
}
