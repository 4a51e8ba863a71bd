//! Waldur's `LinkHeaderPagination`: DRF page-number pagination whose links travel in a
//! `Link` header and whose total travels in `X-Result-Count`, with a bare JSON list as body.
//!
//! Faithful details a client can trip on: `page` is 1-based and `last` is accepted; a
//! page past the end (or not a number) is `404 {"detail":"Invalid page."}` while an empty
//! result still has a page 1; a `page_size` that is not a positive integer silently falls
//! back to the default; a larger one is clamped; link URLs are absolute, built from the
//! request's `Host`, and their query keys come back sorted (DRF re-encodes them).

/// DRF's default `PAGE_SIZE` in Waldur.
pub(crate) const DEFAULT_PAGE_SIZE: usize = 10;

/// One page of a listing, with the headers that describe it.
pub(crate) struct Page<T> {
    pub(crate) items: Vec<T>,
    pub(crate) link: String,
    pub(crate) total: usize,
}

/// Where one page lies in a listing of `total` rows, with the headers that describe it.
pub(crate) struct Window {
    /// Index of the page's first row.
    pub(crate) start: usize,
    /// Most rows on the page (the last page may have fewer).
    pub(crate) page_size: usize,
    pub(crate) link: String,
    pub(crate) total: usize,
}

/// Cuts `items` into the page the query asks for. `Err(())` means "Invalid page.".
///
/// `origin` is `http://host:port`, `path` the request path and `query` the decoded query
/// pairs in request order.
pub(crate) fn paginate<T>(
    items: Vec<T>,
    origin: &str,
    path: &str,
    query: &[(String, String)],
    max_page_size: usize,
) -> Result<Page<T>, ()> {
    let window = window(items.len(), origin, path, query, max_page_size)?;
    let items: Vec<T> = items.into_iter().skip(window.start).take(window.page_size).collect();
    Ok(Page { items, link: window.link, total: window.total })
}

/// The page the query asks for in a listing of `total` rows, for listings that fetch only
/// that page's rows. `Err(())` means "Invalid page.".
pub(crate) fn window(
    total: usize,
    origin: &str,
    path: &str,
    query: &[(String, String)],
    max_page_size: usize,
) -> Result<Window, ()> {
    let page_size = last_value(query, "page_size")
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|&n| n > 0)
        .map(|n| (n as usize).min(max_page_size.max(1)))
        .unwrap_or(DEFAULT_PAGE_SIZE);
    let pages = total.div_ceil(page_size).max(1);
    let page = match last_value(query, "page") {
        None => 1,
        Some("last") => pages,
        Some(v) => match v.trim().parse::<i64>() {
            Ok(n) if n >= 1 && (n as usize) <= pages => n as usize,
            _ => return Err(()),
        },
    };

    let with_page = |n: usize| -> String {
        if n == 1 { build_url(origin, path, query, None) } else { build_url(origin, path, query, Some(n)) }
    };
    let mut links = vec![format!("<{}>; rel=\"first\"", build_url(origin, path, query, None))];
    if page > 1 {
        links.push(format!("<{}>; rel=\"prev\"", with_page(page - 1)));
    }
    if page < pages {
        links.push(format!("<{}>; rel=\"next\"", build_url(origin, path, query, Some(page + 1))));
    }
    links.push(format!("<{}>; rel=\"last\"", with_page(pages)));
    Ok(Window { start: (page - 1) * page_size, page_size, link: links.join(", "), total })
}

/// `QueryDict.get`: the last value of a repeated key.
pub(crate) fn last_value<'a>(query: &'a [(String, String)], key: &str) -> Option<&'a str> {
    query.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// DRF's `replace_query_param` / `remove_query_param`: keys sorted, repeated values kept
/// in order, `page` set to `page` or removed.
fn build_url(origin: &str, path: &str, query: &[(String, String)], page: Option<usize>) -> String {
    let mut keys: Vec<&str> = Vec::new();
    for (k, _) in query {
        if k != "page" && !keys.contains(&k.as_str()) {
            keys.push(k);
        }
    }
    let page_text = page.map(|p| p.to_string());
    if page_text.is_some() {
        keys.push("page");
    }
    keys.sort_unstable();
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for key in keys {
        if key == "page" {
            if let Some(p) = &page_text {
                serializer.append_pair("page", p);
            }
            continue;
        }
        for (k, v) in query {
            if k == key {
                serializer.append_pair(k, v);
            }
        }
    }
    let encoded = serializer.finish();
    if encoded.is_empty() { format!("{origin}{path}") } else { format!("{origin}{path}?{encoded}") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn items(n: usize) -> Vec<Value> {
        (0..n).map(|i| json!(i)).collect()
    }

    #[test]
    fn middle_page_links_everywhere() {
        let query = q(&[("state", "OK"), ("page", "2"), ("page_size", "2"), ("state", "Erred")]);
        let page = paginate(items(5), "http://h", "/api/x/", &query, 100).expect("valid");
        assert_eq!(page.items, vec![json!(2), json!(3)]);
        assert_eq!(page.total, 5);
        assert_eq!(
            page.link,
            "<http://h/api/x/?page_size=2&state=OK&state=Erred>; rel=\"first\", \
             <http://h/api/x/?page_size=2&state=OK&state=Erred>; rel=\"prev\", \
             <http://h/api/x/?page=3&page_size=2&state=OK&state=Erred>; rel=\"next\", \
             <http://h/api/x/?page=3&page_size=2&state=OK&state=Erred>; rel=\"last\""
        );
    }

    #[test]
    fn sizes_and_bounds() {
        let page = paginate(items(250), "http://h", "/p/", &q(&[("page_size", "500")]), 100).expect("valid");
        assert_eq!(page.items.len(), 100);
        let page = paginate(items(25), "http://h", "/p/", &q(&[("page_size", "-3")]), 100).expect("valid");
        assert_eq!(page.items.len(), DEFAULT_PAGE_SIZE);
        let page = paginate(Vec::<Value>::new(), "http://h", "/p/", &q(&[]), 100).expect("page 1 exists");
        assert!(page.items.is_empty());
        assert!(!page.link.contains("next"));
        assert!(paginate(items(3), "http://h", "/p/", &q(&[("page", "2")]), 100).is_err());
        assert!(paginate(items(3), "http://h", "/p/", &q(&[("page", "0")]), 100).is_err());
        assert!(paginate(items(3), "http://h", "/p/", &q(&[("page", "x")]), 100).is_err());
        let last = paginate(items(25), "http://h", "/p/", &q(&[("page", "last")]), 100).expect("valid");
        assert_eq!(last.items.len(), 5);
    }
}
