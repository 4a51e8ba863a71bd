//! Config files, as an operator (or a broken deployment) could write them, through the
//! loader. `AgentConfig::parse` must never panic, and whatever it accepts must hold
//! what the rest of the host relies on: an offering list with a backend each, and
//! limits in range.

#![no_main]

use libfuzzer_sys::fuzz_target;
use usage_agent::config::AgentConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(config) = AgentConfig::parse(text) else { return };
    assert!(!config.offerings.is_empty());
    assert!(config.reporting_periods >= 1);
    assert!(config.component_limits.check().is_ok());
    assert!(config.waldur_timeout() > std::time::Duration::ZERO);
    for (index, offering) in config.offerings() {
        assert!(offering.usage_backend().is_some());
        assert!(offering.dwdi_access().is_ok());
        let _ = offering.display_name(index);
        let settings = offering.component_settings_json();
        assert!(serde_json_is_object(&settings), "{settings}");
    }
    let _ = format!("{config:?}");
});

fn serde_json_is_object(text: &str) -> bool {
    text.starts_with('{') && text.ends_with('}')
}
