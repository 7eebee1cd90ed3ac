//! Bytes → JSON → SFC recipe: parse and validate, then what a valid recipe
//! is used for (Mermaid graph, net compilation).
#![no_main]

use libfuzzer_sys::fuzz_target;
use microdcs::sfc::graph::mermaid;
use microdcs::sfc::net::Net;
use microdcs::sfc::recipe::Recipe;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    match Recipe::parse(&value) {
        Ok(recipe) => {
            assert!(
                recipe.initial_step().is_some(),
                "a valid recipe has an initial step"
            );
            let _ = mermaid(&recipe);
            let _ = Net::compile(&recipe);
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "a refused recipe names its errors");
            let _ = errors.to_string();
        }
    }
});
