//! `wit-next`: a component built against `waldur:usage@4.0.0`, a major version this
//! host does not implement. It names itself `cscs-dwdi-compute` so that only the WIT
//! version check can refuse it.

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)] // Only wit-bindgen's generated ABI glue.
mod component {
    wit_bindgen::generate!({ path: "wit", world: "backend" });

    use exports::waldur::usage::reporting as wit;

    struct Next;

    impl wit::Guest for Next {
        fn describe() -> wit::BackendInfo {
            wit::BackendInfo {
                name: "cscs-dwdi-compute".to_owned(),
                version: "4.0.0".to_owned(),
                backend_types: vec!["cscs-dwdi-compute".to_owned()],
            }
        }

        fn setup(_: String) -> Result<(), String> {
            Ok(())
        }

        fn usage_report(_: wit::ReportRequest) -> Result<Vec<wit::Amount>, String> {
            Ok(Vec::new())
        }
    }

    export!(Next);
}
