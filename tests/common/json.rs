//! Reading the operator API's JSON answers.

use serde_json::Value;

/// The string `field` of every item of the JSON array `items` (a list's names, a trace's steps).
pub fn field_of_each<'a>(items: &'a Value, field: &str) -> Vec<&'a str> {
    let items = items
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {items}"));
    items
        .iter()
        .map(|item| {
            item[field]
                .as_str()
                .unwrap_or_else(|| panic!("no string {field}: {item}"))
        })
        .collect()
}

/// The JSON string `value` as an owned string; `what` names it if it is not one.
pub fn string(value: &Value, what: &str) -> String {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value}"))
        .to_string()
}
