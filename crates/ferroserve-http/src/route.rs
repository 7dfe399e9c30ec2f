//! Route prefixes and the server's root path: the rules, in one place.
//!
//! As Ray Serve's: a route prefix starts with `/`, has no trailing `/` unless it is exactly
//! `/`, and contains no `{` or `}`; `/a` matches `/a` and `/a/...`, not `/ab`; the longest
//! matching prefix wins; an application sees paths relative to its prefix and knows the prefix
//! as its root path. The server's `root_path` (the path a reverse proxy mounts the whole server
//! under) is empty or follows the same rules without being `/`, and every prefix lives under it.

/// Checks a route prefix (see the [module docs](self)); the error says what is wrong.
pub fn validate_route_prefix(prefix: &str) -> Result<(), String> {
    let err = |why: &str| Err(format!("route_prefix '{prefix}' {why}"));
    if !prefix.starts_with('/') {
        return err("must start with '/'");
    }
    if prefix.len() > 1 && prefix.ends_with('/') {
        return err("must not end with '/' unless it is exactly '/'");
    }
    if prefix.contains(['{', '}']) {
        return err("must not contain '{' or '}'");
    }
    Ok(())
}

/// Checks the server's root path: empty, or a path that starts with `/` and does not end with
/// one (and has no braces).
pub fn validate_root_path(root: &str) -> Result<(), String> {
    if root.is_empty()
        || (root.starts_with('/') && !root.ends_with('/') && !root.contains(['{', '}']))
    {
        return Ok(());
    }
    Err(format!(
        "must be empty or start with '/' and not end with '/', got '{root}'"
    ))
}

/// Where an application at `prefix` is mounted under the server's `root_path`: what it sees as
/// its root path.
pub fn mount(root_path: &str, prefix: &str) -> String {
    match (root_path, prefix) {
        ("", prefix) => prefix.to_owned(),
        (root, "/") => root.to_owned(),
        (root, prefix) => format!("{root}{prefix}"),
    }
}

/// A route prefix as a path to prepend: `""` for `/`, the prefix otherwise.
pub fn root_of(prefix: &str) -> &str {
    if prefix == "/" {
        ""
    } else {
        prefix
    }
}

/// `path` relative to the matched `prefix`, always starting with `/`.
pub fn relative_path<'a>(prefix: &str, path: &'a str) -> &'a str {
    match path.get(root_of(prefix).len()..) {
        Some("") | None => "/",
        Some(rel) => rel,
    }
}

/// Whether `path` is under `prefix`: `/a` matches `/a` and `/a/...`, not `/ab`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || (path.starts_with(prefix)
            && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')))
}

/// `path` with the server's `root_path` taken off (`/` when nothing is left), or `None` when
/// the path is not under it.
pub fn strip_root_path<'a>(root_path: &str, path: &'a str) -> Option<&'a str> {
    if root_path.is_empty() {
        return Some(path);
    }
    if !prefix_matches(root_path, path) {
        return None;
    }
    Some(match &path[root_path.len()..] {
        "" => "/",
        rest => rest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_rules() {
        assert!(validate_route_prefix("/").is_ok());
        assert!(validate_route_prefix("/a/b").is_ok());
        assert!(validate_route_prefix("a").is_err());
        assert!(validate_route_prefix("/a/").is_err());
        assert_eq!(
            validate_route_prefix("/{id}").unwrap_err(),
            "route_prefix '/{id}' must not contain '{' or '}'"
        );
    }

    #[test]
    fn root_path_rules() {
        for ok in ["", "/serve", "/a/b"] {
            assert!(validate_root_path(ok).is_ok(), "{ok}");
        }
        for bad in ["/", "serve", "/serve/", "/{x}"] {
            assert!(validate_root_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefix_matching() {
        assert!(prefix_matches("/a", "/a"));
        assert!(prefix_matches("/a", "/a/b"));
        assert!(!prefix_matches("/a", "/ab"));
        assert!(prefix_matches("/", "/anything"));
        assert_eq!(relative_path("/hello", "/hello"), "/");
        assert_eq!(relative_path("/hello", "/hello/x"), "/x");
        assert_eq!(relative_path("/", "/a/b"), "/a/b");
        assert_eq!((root_of("/"), root_of("/hello")), ("", "/hello"));
    }

    #[test]
    fn mounts_and_root_paths() {
        assert_eq!(mount("/serve", "/iris"), "/serve/iris");
        assert_eq!(mount("/serve", "/"), "/serve");
        assert_eq!(mount("", "/"), "/");
        assert_eq!(strip_root_path("/serve", "/serve/iris"), Some("/iris"));
        assert_eq!(strip_root_path("/serve", "/serve"), Some("/"));
        assert_eq!(strip_root_path("/serve", "/server"), None);
        assert_eq!(strip_root_path("", "/x"), Some("/x"));
    }
}
