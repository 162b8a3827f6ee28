//! Procedural macros of flowrun. Do not depend on this crate directly: use `flowrun_engine::node` and
//! `flowrun_engine::Value`, which re-export these. Generated code only names items under
//! `::flowrun_engine::__private`, so node crates never depend on `inventory` themselves.

mod code;

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{
    Expr, ExprLit, FnArg, GenericArgument, ItemFn, Lit, Pat, PathArguments, ReturnType, Type, parse_macro_input,
};

const NODE_OPTIONS: &str = "name, version, tags, code";

/// Registers a plain function as a flowrun node. See `flowrun_engine::node` for the full documentation.
#[proc_macro_attribute]
pub fn node(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut options = NodeOptions::default();
    let parser = syn::meta::parser(|meta| options.parse(meta));
    parse_macro_input!(attr with parser);
    let func = parse_macro_input!(item as ItemFn);
    expand_node(func, options).unwrap_or_else(|e| e.to_compile_error()).into()
}

#[derive(Default)]
struct NodeOptions {
    name: Option<String>,
    version: Option<u64>,
    tags: Vec<(String, String)>,
    /// `code = "fn"`: the code version covers the function's own tokens only (see `code.rs`).
    fn_only: bool,
}

impl NodeOptions {
    /// One option of `#[node(...)]`.
    fn parse(&mut self, meta: ParseNestedMeta) -> syn::Result<()> {
        let ident = meta.path.get_ident().map(|i| i.to_string()).unwrap_or_default();
        let malformed = |e: syn::Error| {
            let write = "write name = \"x\", version = 2, tags(layer = \"raw\"), code = \"fn\"";
            syn::Error::new(e.span(), format!("malformed `{ident}` ({e}); {write}"))
        };
        match ident.as_str() {
            "name" => self.name = Some(lit_str(&meta.value().map_err(malformed)?.parse()?)?),
            "version" => match meta.value().map_err(malformed)?.parse()? {
                Expr::Lit(ExprLit { lit: Lit::Int(i), .. }) => self.version = Some(i.base10_parse()?),
                other => return error(other, "`version` takes an integer, e.g. version = 2"),
            },
            "tags" => meta
                .parse_nested_meta(|tag| {
                    let key = tag.path.get_ident().ok_or_else(|| tag.error("tag names are plain identifiers"))?;
                    self.tags.push((key.to_string(), lit_str(&tag.value()?.parse()?)?));
                    Ok(())
                })
                .map_err(malformed)?,
            "code" => {
                let value: Expr = meta.value().map_err(malformed)?.parse()?;
                self.fn_only = match lit_str(&value)?.as_str() {
                    "crate" => false,
                    "fn" => true,
                    _ => {
                        return error(
                            value,
                            "`code` is \"crate\" (the default: the function, its crate's code and dependencies) \
                             or \"fn\" (the function's own tokens only)",
                        );
                    }
                }
            }
            _ => return Err(meta.error(format!("unknown #[node] option `{ident}`; expected one of: {NODE_OPTIONS}"))),
        }
        Ok(())
    }
}

/// An error at `at`.
fn error<T>(at: impl ToTokens, message: impl std::fmt::Display) -> syn::Result<T> {
    Err(syn::Error::new_spanned(at, message))
}

fn lit_str(expr: &Expr) -> syn::Result<String> {
    match expr {
        Expr::Lit(ExprLit { lit: Lit::Str(s), .. }) => Ok(s.value()),
        other => error(other, "expected a string literal"),
    }
}

/// The last path segment of a type and its single generic argument, for `Collect<T>`, `Parallel<T>`,
/// `Result<T, E>` detection.
fn wrapper<'a>(ty: &'a Type, name: &str) -> Option<&'a Type> {
    let Type::Path(tp) = ty else { return None };
    let seg = tp.path.segments.last().filter(|seg| seg.ident == name)?;
    let PathArguments::AngleBracketed(args) = &seg.arguments else { return None };
    args.args.iter().find_map(|a| if let GenericArgument::Type(t) = a { Some(t) } else { None })
}

fn doc_of(attrs: &[syn::Attribute]) -> String {
    let doc = attrs.iter().filter(|a| a.path().is_ident("doc"));
    let lines: Vec<String> = doc.filter_map(|a| lit_str(&a.meta.require_name_value().ok()?.value).ok()).collect();
    lines.iter().map(|l| l.trim()).collect::<Vec<_>>().join("\n").trim().to_string()
}

fn expand_node(func: ItemFn, options: NodeOptions) -> syn::Result<TokenStream2> {
    let sig = &func.sig;
    if let Some(a) = &sig.asyncness {
        return error(a, "a node is a plain synchronous function; flowrun runs nodes on its own threads");
    }
    if !sig.generics.params.is_empty() {
        let why = "its parameter and output types are checked against the flow before it runs";
        return error(&sig.generics, format!("a node cannot be generic: {why}"));
    }
    if let Some(v) = &sig.variadic {
        return error(v, "a node cannot be variadic");
    }
    let p = quote!(::flowrun_engine::__private);
    let fn_ident = &sig.ident;
    let node_name = options.name.clone().unwrap_or_else(|| fn_ident.to_string());
    let call_ident = format_ident!("__flowrun_call_{}", fn_ident);

    let (mut param_defs, mut bindings, mut call_args) = (Vec::new(), Vec::new(), Vec::new());
    for (i, input) in sig.inputs.iter().enumerate() {
        let FnArg::Typed(pt) = input else {
            return error(input, "a node is a free function; `self` parameters are not supported");
        };
        let Pat::Ident(pat) = &*pt.pat else {
            return error(
                &pt.pat,
                "node parameters must be plain names: the name is the edge (the node or value it reads)",
            );
        };
        let pname = pat.ident.unraw().to_string();
        let local = format_ident!("__flowrun_arg{}", i);
        // bound to a generated name: a parameter may share the function's name
        let ident = format_ident!("__flowrun_val{}", i);
        let ty = &*pt.ty;
        let span = ty.span();
        if let Type::ImplTrait(_) = ty {
            return error(ty, "`impl Trait` parameters are not supported; name a concrete type");
        }
        // the parameter's kind, the value type it reads, how the generated call takes it, and whether by `&`
        let (kind, value_ty, take, arg, by_ref) = if let Type::Reference(r) = ty {
            if r.mutability.is_some() {
                return error(ty, "a node cannot take `&mut`: its inputs are shared with other nodes");
            }
            if wrapper(&r.elem, "Collect").is_some() {
                return error(ty, "take `Collect<T>` by value, not by reference");
            }
            (quote!(Value), &*r.elem, quote!(arg_ref), quote!(&#local), true)
        } else if let Some(item) = wrapper(ty, "Collect") {
            (quote!(Collect), item, quote!(arg_collect), quote!(#local), false)
        } else {
            (quote!(Value), ty, quote!(arg_owned), quote!(#local), false)
        };
        param_defs.push(quote_spanned! {span=>
            #p::ParamDef { name: #pname, kind: #p::ParamKind::#kind(#p::TypeDesc::of::<#value_ty>()), by_ref: #by_ref }
        });
        let binding = quote_spanned!(span=> let #ident: #ty = #p::#take::<#value_ty>(#arg, #pname)?;);
        bindings.push(quote! { let #local = __args.take(#i); #binding });
        call_args.push(quote!(#ident));
    }

    let (out_ty, fallible): (Type, bool) = match &sig.output {
        ReturnType::Default => (syn::parse_quote!(()), false),
        ReturnType::Type(_, ty) => match wrapper(ty, "Result") {
            Some(inner) => (inner.clone(), true),
            None => ((**ty).clone(), false),
        },
    };
    let out_span = out_ty.span();
    let output = match wrapper(&out_ty, "Parallel") {
        Some(item) => quote_spanned!(out_span=>
            #p::OutputKind::Parallel { list: #p::TypeDesc::of::<#out_ty>(), item: #p::TypeDesc::of::<#item>() }),
        None => quote_spanned!(out_span=> #p::OutputKind::Value(#p::TypeDesc::of::<#out_ty>())),
    };
    let call = quote!(#fn_ident(#(#call_args),*));
    let result =
        if fallible { call } else { quote!(::core::result::Result::<_, ::core::convert::Infallible>::Ok(#call)) };

    // The code version: a hash of the function's own tokens (signature and body, not its attributes or
    // doc comment) and the explicit version bump, then `+` and the digest of the code it can call (its
    // crate, the workspace crates and the locked dependencies that crate reaches: see `code.rs`).
    let mut hasher = blake3::Hasher::new();
    hasher.update(sig.to_token_stream().to_string().as_bytes());
    hasher.update(func.block.to_token_stream().to_string().as_bytes());
    hasher.update(&options.version.unwrap_or(0).to_le_bytes());
    let own = hasher.finalize().to_hex()[..16].to_string();
    let code_version = match (options.fn_only, code::crate_digest()) {
        (false, Some(deps)) => format!("{own}+{deps}"),
        _ => own,
    };
    let doc = doc_of(&func.attrs);
    let tags = options.tags.iter().map(|(k, v)| quote!((#k, #v)));
    let version = options.version.unwrap_or(0);
    let line = quote_spanned!(fn_ident.span()=> ::core::line!());

    // A node borrows its inputs as `&T` of the stored value type (`&String`, `&Vec<String>`): clippy's
    // "use &str / &[T]" advice does not apply to a signature the engine dictates.
    Ok(quote! {
        #[allow(clippy::ptr_arg)]
        #func

        #[doc(hidden)]
        #[allow(non_snake_case, clippy::needless_question_mark)]
        fn #call_ident(__args: &mut #p::Args) -> #p::NodeResult {
            #(#bindings)*
            #p::finish(#result)
        }

        #p::inventory::submit! {
            #p::NodeDef {
                name: #node_name,
                module: ::core::module_path!(),
                path: ::core::concat!(::core::module_path!(), "::", #node_name),
                doc: #doc,
                params: &[#(#param_defs),*],
                output: #output,
                code_version: #code_version,
                version: #version,
                tags: &[#(#tags),*],
                call: #call_ident,
                file: ::core::file!(),
                line: #line,
            }
        }
    })
}

/// Implements `flowrun_engine::Value` for a serde type. See `flowrun_engine::Value` for the documentation.
#[proc_macro_derive(Value, attributes(value))]
pub fn derive_value(item: TokenStream) -> TokenStream {
    let input = parse_macro_input!(item as syn::DeriveInput);
    expand_value(input).unwrap_or_else(|e| e.to_compile_error()).into()
}

fn expand_value(input: syn::DeriveInput) -> syn::Result<TokenStream2> {
    if !input.generics.params.is_empty() {
        return error(&input.generics, "#[derive(Value)] supports types without generics");
    }
    let mut label: Option<syn::Ident> = None;
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("value")) {
        attr.parse_nested_meta(|meta| {
            if !meta.path.is_ident("label") {
                return Err(meta.error("unknown #[value] option; expected `label = \"field\"`"));
            }
            label = Some(meta.value()?.parse::<syn::LitStr>()?.parse()?);
            Ok(())
        })?;
    }
    let ident = &input.ident;
    let label_fn = label.map(|field| {
        quote! {
            fn label(&self) -> ::core::option::Option<::std::string::String> {
                ::core::option::Option::Some(::std::string::ToString::to_string(&self.#field))
            }
        }
    });
    Ok(quote! {
        impl ::flowrun_engine::Value for #ident {
            fn encode(&self, out: &mut ::std::vec::Vec<u8>) -> ::core::result::Result<(), ::flowrun_engine::CodecError> {
                ::flowrun_engine::__private::serde_encode(self, out)
            }
            fn decode(bytes: &[u8]) -> ::core::result::Result<Self, ::flowrun_engine::CodecError> {
                ::flowrun_engine::__private::serde_decode(bytes)
            }
            fn from_toml(
                value: &::flowrun_engine::__private::toml::Value,
                _cx: &::flowrun_engine::LiteralCx,
            ) -> ::core::result::Result<Self, ::std::string::String> {
                ::flowrun_engine::__private::serde_from_toml(value)
            }
            #label_fn
        }
    })
}
