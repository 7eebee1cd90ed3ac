//! Adjusting typify's output to the wire contract, on the syntax tree.
//!
//! - Every field whose JSON name is not snake_case (`JobOrderID`, `Type`)
//!   also accepts the snake_case spelling on input:
//!   `#[serde(alias = "job_order_id")]`, `#[serde(alias = "type")]`.
//! - Optional arrays and maps, which typify makes `Vec<T>`/`BTreeMap` with
//!   `skip_serializing_if = "Vec::is_empty"`, become `Option<…>` like every
//!   other optional field: absent stays absent, `[]` stays `[]`, and `null`
//!   on input is accepted as absent. Output never contains `null`.

use heck::ToSnakeCase;
use proc_macro2::TokenStream;
use quote::quote;
use syn::visit_mut::{self, VisitMut};
use syn::{parse_quote, Attribute, Field, Fields, ItemStruct, LitStr};

const OPTION_IS_NONE: &str = "::std::option::Option::is_none";

pub(crate) fn apply(file: &mut syn::File) {
    Fixer.visit_file_mut(file);
}

struct Fixer;

impl VisitMut for Fixer {
    fn visit_item_struct_mut(&mut self, item: &mut ItemStruct) {
        if let Fields::Named(fields) = &mut item.fields {
            for field in &mut fields.named {
                fix_field(field);
            }
        }
        visit_mut::visit_item_struct_mut(self, item);
    }
}

/// One `key` or `key = "value"` item of a `#[serde(...)]` attribute.
struct SerdeItem {
    key: syn::Path,
    value: Option<syn::Lit>,
}

fn parse_serde(attr: &Attribute) -> Option<Vec<SerdeItem>> {
    if !attr.path().is_ident("serde") {
        return None;
    }
    let mut items = Vec::new();
    let parsed = attr.parse_nested_meta(|meta| {
        let value = if meta.input.peek(syn::Token![=]) {
            Some(meta.value()?.parse::<syn::Lit>()?)
        } else {
            None
        };
        items.push(SerdeItem {
            key: meta.path,
            value,
        });
        Ok(())
    });
    parsed.ok().map(|()| items)
}

fn lit_str(item: &SerdeItem) -> Option<String> {
    match &item.value {
        Some(syn::Lit::Str(s)) => Some(s.value()),
        _ => None,
    }
}

fn fix_field(field: &mut Field) {
    if field.ident.is_none() {
        return;
    }
    let mut rename = None;
    let mut wrap = false;
    let mut new_attrs = Vec::with_capacity(field.attrs.len());
    for attr in field.attrs.drain(..) {
        let Some(mut items) = parse_serde(&attr) else {
            new_attrs.push(attr);
            continue;
        };
        for item in &items {
            if item.key.is_ident("rename") {
                rename = lit_str(item);
            }
        }
        let bare_default = items
            .iter()
            .any(|i| i.key.is_ident("default") && i.value.is_none());
        for item in &mut items {
            let skip = lit_str(item).filter(|_| item.key.is_ident("skip_serializing_if"));
            if let Some(skip) = skip {
                if skip != OPTION_IS_NONE && bare_default {
                    wrap = true;
                    item.value = Some(syn::Lit::Str(LitStr::new(
                        OPTION_IS_NONE,
                        proc_macro2::Span::call_site(),
                    )));
                }
            }
        }
        let rendered: Vec<TokenStream> = items
            .iter()
            .map(|SerdeItem { key, value }| match value {
                Some(value) => quote!(#key = #value),
                None => quote!(#key),
            })
            .collect();
        new_attrs.push(parse_quote!(#[serde(#(#rendered),*)]));
    }
    if let Some(rename) = rename {
        let alias = rename.to_snake_case();
        if alias != rename {
            new_attrs.push(parse_quote!(#[serde(alias = #alias)]));
        }
    }
    field.attrs = new_attrs;
    if wrap {
        let ty = &field.ty;
        field.ty = parse_quote!(::std::option::Option<#ty>);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(item: syn::ItemStruct) -> String {
        let mut file = syn::File {
            shebang: None,
            attrs: Vec::new(),
            items: vec![syn::Item::Struct(item)],
        };
        apply(&mut file);
        prettyplease::unparse(&file)
    }

    #[test]
    fn renamed_fields_accept_snake_case() {
        let out = fixed(parse_quote! {
            pub struct A {
                #[serde(rename = "JobOrderID")]
                pub job_order_id: String,
                #[serde(rename = "Type")]
                pub type_: String,
                #[serde(rename = "type")]
                pub r#type: String,
                pub seq: u64,
            }
        });
        assert!(out.contains(r#"#[serde(alias = "job_order_id")]"#), "{out}");
        assert!(out.contains(r#"#[serde(alias = "type")]"#), "{out}");
        assert_eq!(out.matches("alias").count(), 2, "{out}");
    }

    #[test]
    fn optional_vectors_become_options() {
        let out = fixed(parse_quote! {
            pub struct A {
                #[serde(rename = "Comment", default, skip_serializing_if = "::std::vec::Vec::is_empty")]
                pub comment: ::std::vec::Vec<String>,
                #[serde(rename = "X", default, skip_serializing_if = "::std::option::Option::is_none")]
                pub x: ::std::option::Option<String>,
            }
        });
        assert!(
            out.contains("pub comment: ::std::option::Option<::std::vec::Vec<String>>"),
            "{out}"
        );
        assert!(!out.contains("Vec::is_empty"), "{out}");
        assert!(
            out.contains("pub x: ::std::option::Option<String>,"),
            "{out}"
        );
    }
}
