use super::*;

#[test]
fn header_ops_remove_then_set_then_add() {
    let mut h = HeaderMap::new();
    h.insert("x-old", HeaderValue::from_static("1"));
    h.insert("x-keep", HeaderValue::from_static("a"));
    let ops = pb::HeaderOps {
        set: [("x-keep".to_string(), "b".to_string())]
            .into_iter()
            .collect(),
        add: [("x-keep".to_string(), "c".to_string())]
            .into_iter()
            .collect(),
        remove: vec!["x-old".into()],
    };
    apply_header_ops(&mut h, Some(&ops));
    assert!(h.get("x-old").is_none());
    let keep: Vec<_> = h.get_all("x-keep").iter().collect();
    assert_eq!(keep, ["b", "c"]);
}

#[test]
fn rewrites_replace_the_matched_prefix() {
    assert_eq!(rewrite_path("/v2/users/1", Some("/v2/"), "/"), "/users/1");
    assert_eq!(rewrite_path("/v2/users", Some("/v2"), "/api"), "/api/users");
    assert_eq!(rewrite_path("/exact", None, "/other"), "/other");
}

#[test]
fn redirects_keep_what_they_do_not_replace() {
    let route = pb::HttpRoute {
        matches: vec![pb::HttpMatch {
            uri: Some(pb::StringMatch {
                kind: Some(pb::string_match::Kind::Prefix("/old".into())),
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let r = pb::Redirect {
        uri: "/new".into(),
        code: 308,
        ..Default::default()
    };
    let uri: Uri = "/old/page?x=1".parse().unwrap();
    let (status, loc) = redirect_location(&r, &route, &uri, Some("shop.example"));
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(loc, "http://shop.example/new/page?x=1");
    let (status, _) = redirect_location(&pb::Redirect::default(), &route, &uri, None);
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
}

#[test]
fn retry_conditions() {
    let p = RetryPolicy::compile(Some(&pb::RetryPolicy {
        attempts: 2,
        retry_on: vec!["gateway-error".into(), "429".into()],
        ..Default::default()
    }))
    .unwrap()
    .unwrap();
    assert!(p.retries(&TryOutcome::Status(StatusCode::BAD_GATEWAY)));
    assert!(p.retries(&TryOutcome::Status(StatusCode::TOO_MANY_REQUESTS)));
    assert!(!p.retries(&TryOutcome::Status(StatusCode::INTERNAL_SERVER_ERROR)));
    assert!(!p.retries(&TryOutcome::Status(StatusCode::OK)));
    let err = RetryPolicy::compile(Some(&pb::RetryPolicy {
        attempts: 1,
        retry_on: vec!["sometimes".into()],
        ..Default::default()
    }))
    .unwrap_err();
    assert!(err.contains("sometimes"), "{err}");
    assert_eq!(p.budget_ratio, RETRY_BUDGET_RATIO, "the default budget");
    assert_eq!(RetryPolicy::compile(None).unwrap(), None);
}

#[test]
fn the_budget_caps_retries_to_a_share_of_requests() {
    let b = RetryBudget::default();
    // Drain the starting allowance.
    while b.withdraw(RETRY_BUDGET_MIN_PER_SEC) {}
    let mut allowed = 0;
    for _ in 0..1000 {
        b.deposit(RETRY_BUDGET_RATIO);
        if b.withdraw(RETRY_BUDGET_MIN_PER_SEC) {
            allowed += 1;
        }
    }
    // 20% of 1000, plus at most what the per-second floor refills meanwhile.
    assert!((195..=230).contains(&allowed), "{allowed}");
    assert!(b.exhausted.load(Ordering::Relaxed) > 700);
}

#[test]
fn grpc_timeouts() {
    let mut h = HeaderMap::new();
    h.insert("grpc-timeout", HeaderValue::from_static("250m"));
    assert_eq!(grpc_timeout(&h), Some(Duration::from_millis(250)));
    h.insert("grpc-timeout", HeaderValue::from_static("2S"));
    assert_eq!(grpc_timeout(&h), Some(Duration::from_secs(2)));
    h.insert("grpc-timeout", HeaderValue::from_static("soon"));
    assert_eq!(grpc_timeout(&h), None);
    assert_eq!(grpc_timeout_value(Duration::from_micros(1500)), "1m");
}

#[tokio::test]
async fn bodies_are_buffered_up_to_the_limit_and_stream_beyond() {
    let small = http_body_util::Full::new(Bytes::from_static(b"hello"));
    let mut b = ReplayBody::read(small, 16).await.unwrap();
    assert!(b.is_replayable());
    for _ in 0..2 {
        let got = b.take().unwrap().collect().await.unwrap().to_bytes();
        assert_eq!(&got[..], b"hello");
    }
    let big = http_body_util::StreamBody::new(futures::stream::iter((0..4).map(|i| {
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(vec![i; 10])))
    })));
    let mut b = ReplayBody::read(big, 16).await.unwrap();
    assert!(!b.is_replayable());
    let got = b.take().unwrap().collect().await.unwrap().to_bytes();
    assert_eq!(got.len(), 40, "nothing is lost when the buffer overflows");
    assert!(b.take().is_none(), "a streamed body is sent once");
    assert!(!b.is_replayable());
}
