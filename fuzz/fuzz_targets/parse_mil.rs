//! Any text: the parser and checker return errors, never panic; what parses round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(program) = ane_mil::parse(text) {
        let _ = ane_mil::check_program(&program, None);
        let printed = ane_mil::print_program(&program);
        let again = ane_mil::parse(&printed).expect("printed programs parse");
        // NaN literals compare unequal; compare their printed forms instead
        assert_eq!(ane_mil::print_program(&again), printed);
    }
});
