//! Route prefixes: validation accepts exactly Ray's rule (starts with `/`, no trailing `/`
//! unless it is `/`, no `{` `}`) and explains refusals; the proxy picks the longest valid prefix
//! that is a path-segment prefix of the path (after `root_path`), and the application sees the
//! rest of the path, which joined to its mount gives the path back.
#![no_main]

use ferroserve::__fuzz::{find_route, mount, prefix_matches, relative_path};
use ferroserve::route::validate_route_prefix;
use libfuzzer_sys::fuzz_target;

/// The input, one item a line: the root path, the request path, then the route prefixes.
struct Input<'a> {
    root_path: &'a str,
    prefixes: Vec<&'a str>,
    path: &'a str,
}

fn input(data: &[u8]) -> Option<Input<'_>> {
    let mut lines = std::str::from_utf8(data).ok()?.split('\n');
    Some(Input {
        root_path: lines.next()?,
        path: lines.next()?,
        prefixes: lines.collect(),
    })
}

fn valid(prefix: &str) -> bool {
    prefix.starts_with('/')
        && (prefix == "/" || !prefix.ends_with('/'))
        && !prefix.contains(['{', '}'])
}

/// `prefix` is `/`, or `path` is `prefix` or continues it with a `/`.
fn under(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = input(data) else { return };
    let mut prefixes: Vec<&str> = Vec::new();
    for &p in &input.prefixes {
        match validate_route_prefix(p) {
            Ok(()) => {
                assert!(valid(p), "accepted {p:?}");
                assert_eq!(prefix_matches(p, &input.path), under(p, &input.path));
                // A server refuses two applications at one prefix.
                if !prefixes.contains(&p) {
                    prefixes.push(p);
                }
            }
            Err(e) => {
                assert!(!valid(p), "refused {p:?}: {e}");
                assert!(e.to_string().contains("route_prefix"), "{e}");
            }
        }
    }
    // The root path as config validation allows it.
    let root = input.root_path;
    if !(root.is_empty() || (valid(root) && root != "/")) {
        return;
    }
    let path = input.path;
    let rest = if root.is_empty() {
        Some(path)
    } else if under(root, path) {
        Some(match &path[root.len()..] {
            "" => "/",
            rest => rest,
        })
    } else {
        None
    };
    let expected = rest.and_then(|rest| {
        (0..prefixes.len())
            .filter(|&i| under(prefixes[i], rest))
            .max_by_key(|&i| prefixes[i].len())
    });
    let found = find_route(root, &prefixes, path);
    assert_eq!(
        found, expected,
        "root {root:?} prefixes {prefixes:?} path {path:?}"
    );
    let Some(i) = found else { return };
    let mount = mount(root, prefixes[i]);
    let base = if mount == "/" { "" } else { mount.as_str() };
    let relative = relative_path(&mount, path);
    assert!(
        format!("{base}{relative}") == path || (path == base && relative == "/") || path.is_empty(),
        "mount {mount:?} + {relative:?} != {path:?}"
    );
    if path.starts_with('/') {
        assert!(relative.starts_with('/'), "{relative:?}");
    }
});
