"""Envoy's bootstrap for the local mobile gateway, generated from mesh/istio/gateway.

The filter chain does locally what Istio's gateway does in the cluster, in this order:
grpc_web (first, so every later refusal reaches the browser as a gRPC-web status: 401 →
UNAUTHENTICATED, 403 → PERMISSION_DENIED, 429 → UNAVAILABLE) → cors (answers preflights of
listed origins) → local_ratelimit (sign-in rpcs only) → jwt_authn (the RequestAuthentication:
a bad token is refused everywhere, a missing one only where the AuthorizationPolicy needs one)
→ rbac (the AuthorizationPolicy's allow-list) → router (the VirtualService's routes, timeouts
and retries).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from his.base.catalog import JWKS_PATH
from his.gateway.config import GatewayConfig
from his.gateway.policy import GatewayPolicy, PolicyError, Route

_JWT_PROVIDER = "his"
_PAYLOAD_KEY = "jwt_payload"
_WEB_APP = "web_app"
_IAM_KEYS = "iam_keys"
_TYPE = "type.googleapis.com/envoy.extensions."

# What the access log says of a call: no query strings, no bodies, no tokens. grpc-status is the
# response header's: the gateway's own refusals set it; a service's answer carries its status in
# the body's trailer frame once grpc_web has encoded it ("-" here: each service logs its calls'
# codes itself). Envoy's own %GRPC_STATUS% would guess from that body and say 2 (UNKNOWN).
_ACCESS_LOG_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ_WITHOUT_QUERY(:PATH)% %PROTOCOL%" %RESPONSE_CODE% '
    "grpc-status=%RESP(GRPC-STATUS)% flags=%RESPONSE_FLAGS% %DURATION%ms "
    'from=%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% origin="%REQ(ORIGIN)%"\n'
)


@dataclass(frozen=True)
class LocalAddresses:
    """Where the gateway finds what it fronts on this machine (`his up`'s ports)."""

    # Service name → port of its gRPC server on 127.0.0.1.
    services: Mapping[str, int]
    # iam's HTTP port (its JWKS).
    iam_http: int
    host: str = "127.0.0.1"


def _duration(seconds: float) -> str:
    return f"{seconds:g}s"


def _cluster(name: str, host: str, port: int, *, http2: bool) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": host, "port_value": port}}
                            }
                        }
                    ]
                }
            ],
        },
    }
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _TYPE + "upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster


def _route_action(route: Route) -> dict[str, Any]:
    action: dict[str, Any] = {
        "cluster": f"service_{route.service}",
        "timeout": _duration(route.timeout_s),
    }
    if route.retries is not None and route.retries.attempts > 0:
        retry: dict[str, Any] = {
            "retry_on": route.retries.retry_on,
            "num_retries": route.retries.attempts,
        }
        if route.retries.per_try_timeout_s is not None:
            retry["per_try_timeout"] = _duration(route.retries.per_try_timeout_s)
        action["retry_policy"] = retry
    return action


def route_for(policy: GatewayPolicy, path: str) -> Route:
    """The VirtualService route a path takes (the first that matches, as Envoy decides)."""
    for route in policy.routes:
        if route.regex is not None and re.fullmatch(route.regex, path):
            return route
        if route.prefix is not None and path.startswith(route.prefix):
            return route
    raise PolicyError(f"{path} is allowed but no route of the mobile VirtualService takes it")


def _match(route: Route) -> dict[str, Any]:
    if route.regex is not None:
        return {"safe_regex": {"regex": route.regex}}
    return {"prefix": route.prefix}


def _sign_in_limit(config: GatewayConfig) -> dict[str, Any]:
    percent = {"numerator": 100, "denominator": "HUNDRED"}
    return {
        "@type": _TYPE + "filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "sign_in",
        "token_bucket": {
            "max_tokens": config.sign_in_per_minute,
            "tokens_per_fill": config.sign_in_per_minute,
            "fill_interval": "60s",
        },
        "filter_enabled": {"runtime_key": "sign_in_limit_enabled", "default_value": percent},
        "filter_enforced": {"runtime_key": "sign_in_limit_enforced", "default_value": percent},
        # Envoy answers a gRPC-web request's local replies as plain HTTP (it decides "gRPC?" before
        # grpc_web translates), and grpc_web maps 429 to UNAVAILABLE, message
        # "local_rate_limited": apps show "too many attempts, wait a minute" on that pair.
    }


def _routes(policy: GatewayPolicy, config: GatewayConfig) -> list[dict[str, Any]]:
    routes: list[dict[str, Any]] = [
        {
            # The CORS filter answers preflights of listed origins itself; any other goes to the
            # web app's server, which refuses OPTIONS (405) without CORS headers. (Not a
            # direct_response: the CORS filter finds no policy on such a route.)
            "name": "preflight",
            "match": {"prefix": "/", "headers": [_method("OPTIONS")]},
            "route": {"cluster": _WEB_APP, "timeout": "10s"},
        }
    ]
    # Sign-in rpcs (reachable without a token) get routes of their own for their rate limit.
    for path in policy.open_paths:
        route = route_for(policy, path)
        routes.append(
            {
                "name": f"sign-in:{path}",
                "match": {"path": path},
                "route": _route_action(route),
                "typed_per_filter_config": {
                    "envoy.filters.http.local_ratelimit": _sign_in_limit(config)
                },
            }
        )
    routes.extend(
        {"name": route.name, "match": _match(route), "route": _route_action(route)}
        for route in policy.routes
    )
    off: dict[str, Any] = {
        "envoy.filters.http.jwt_authn": {
            "@type": _TYPE + "filters.http.jwt_authn.v3.PerRouteConfig",
            "disabled": True,
        },
        # An RBACPerRoute without rules turns the allow-list off for the route.
        "envoy.filters.http.rbac": {"@type": _TYPE + "filters.http.rbac.v3.RBACPerRoute"},
    }
    routes.append(
        {
            # Everything else a browser GETs is the web app (its files, or its index for the
            # app's own paths): the same origin as the rpcs, so the app needs no CORS at all.
            "name": "web-app",
            "match": {"prefix": "/", "headers": [_methods("GET", "HEAD")]},
            "route": {"cluster": _WEB_APP, "timeout": "10s"},
            "typed_per_filter_config": off,
        }
    )
    routes.append(
        {
            "name": "not-found",
            "match": {"prefix": "/"},
            "direct_response": {"status": 404, "body": {"inline_string": "not found\n"}},
        }
    )
    return routes


def _method(method: str) -> dict[str, Any]:
    return {"name": ":method", "string_match": {"exact": method}}


def _methods(*methods: str) -> dict[str, Any]:
    return {"name": ":method", "string_match": {"safe_regex": {"regex": "|".join(methods)}}}


def _cors(policy: GatewayPolicy, config: GatewayConfig) -> dict[str, Any]:
    cors = policy.cors
    return {
        "@type": _TYPE + "filters.http.cors.v3.CorsPolicy",
        "allow_origin_string_match": [
            {"exact": origin} for origin in (*cors.origins, *config.extra_origins)
        ],
        "allow_methods": ",".join(cors.methods),
        "allow_headers": ",".join(cors.allow_headers),
        "expose_headers": ",".join(cors.expose_headers),
        "max_age": str(cors.max_age_s),
        "allow_credentials": False,
    }


def _jwt_authn(policy: GatewayPolicy, addresses: LocalAddresses) -> dict[str, Any]:
    optional = {
        "requires_any": {"requirements": [{"provider_name": _JWT_PROVIDER}, {"allow_missing": {}}]}
    }
    return {
        "@type": _TYPE + "filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {
            _JWT_PROVIDER: {
                "issuer": policy.issuer,
                "audiences": list(policy.audiences),
                "remote_jwks": {
                    "http_uri": {
                        "uri": f"http://{addresses.host}:{addresses.iam_http}{JWKS_PATH}",
                        "cluster": _IAM_KEYS,
                        "timeout": "5s",
                    },
                    "cache_duration": "300s",
                    # Fetched at start and again a second after a failed fetch, not first on a
                    # caller's request.
                    "async_fetch": {"failed_refetch_duration": "1s"},
                },
                # Only the Authorization header: by default Envoy also takes `?access_token=`,
                # and a token in a URL ends up in logs and browser histories.
                "from_headers": [{"name": "Authorization", "value_prefix": "Bearer "}],
                # The services verify the token again and read the caller from it.
                "forward": policy.forward_token,
                "payload_in_metadata": _PAYLOAD_KEY,
            }
        },
        # A missing token is fine where the AuthorizationPolicy needs none (a bad one is not,
        # as with Istio's RequestAuthentication); everywhere else it is UNAUTHENTICATED here.
        "rules": [
            *({"match": {"path": path}, "requires": optional} for path in policy.open_paths),
            {"match": {"prefix": "/"}, "requires": {"provider_name": _JWT_PROVIDER}},
        ],
        "bypass_cors_preflight": True,
    }


def _path_permission(paths: tuple[str, ...]) -> dict[str, Any]:
    return {
        "and_rules": {
            "rules": [
                {"header": _method("POST")},
                {
                    "or_rules": {
                        "rules": [{"url_path": {"path": {"exact": path}}} for path in paths]
                    }
                },
            ]
        }
    }


def _rbac(policy: GatewayPolicy) -> dict[str, Any]:
    policies: dict[str, Any] = {}
    if policy.preflight_open:
        policies["preflight"] = {
            "permissions": [{"header": _method("OPTIONS")}],
            "principals": [{"any": True}],
        }
    if policy.open_paths:
        policies["sign-in"] = {
            "permissions": [_path_permission(policy.open_paths)],
            "principals": [{"any": True}],
        }
    if policy.signed_in_paths:
        policies["signed-in"] = {
            "permissions": [_path_permission(policy.signed_in_paths)],
            # requestPrincipals `<issuer>/*`: any subject of a token jwt_authn verified.
            "principals": [
                {
                    "metadata": {
                        "filter": "envoy.filters.http.jwt_authn",
                        "path": [{"key": _PAYLOAD_KEY}, {"key": "iss"}],
                        "value": {"string_match": {"exact": policy.issuer}},
                    }
                }
            ],
        }
    return {
        "@type": _TYPE + "filters.http.rbac.v3.RBAC",
        "rules": {"action": "ALLOW", "policies": policies},
    }


def bootstrap(
    policy: GatewayPolicy,
    config: GatewayConfig,
    addresses: LocalAddresses,
    *,
    ipv6_loopback: bool = False,
) -> dict[str, Any]:
    """The whole Envoy bootstrap (static resources only) as a mapping, ready to dump as JSON;
    with `ipv6_loopback`, a loopback gateway listens on ::1 too."""
    services = sorted({route.service for route in policy.routes})
    missing = [name for name in services if name not in addresses.services]
    if missing:
        raise PolicyError(f"the gateway routes to {', '.join(missing)}, which has no local port")
    manager = {
        "@type": _TYPE + "filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "mobile",
        "codec_type": "AUTO",
        # The caller's address is the peer's: appended to x-forwarded-for for the services.
        "use_remote_address": True,
        "xff_num_trusted_hops": 0,
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "REJECT_REQUEST",
        "request_headers_timeout": "10s",
        "stream_idle_timeout": "300s",
        "access_log": [
            {
                "name": "envoy.access_loggers.stdout",
                "typed_config": {
                    "@type": _TYPE + "access_loggers.stream.v3.StdoutAccessLog",
                    "log_format": {
                        "text_format_source": {"inline_string": _ACCESS_LOG_FORMAT},
                        # %REQ_WITHOUT_QUERY%: the path without its query string.
                        "formatters": [
                            {
                                "name": "envoy.formatter.req_without_query",
                                "typed_config": {
                                    "@type": _TYPE
                                    + "formatter.req_without_query.v3.ReqWithoutQuery"
                                },
                            }
                        ],
                    },
                },
            }
        ],
        "route_config": {
            "name": "mobile",
            "virtual_hosts": [
                {
                    "name": "mobile",
                    "domains": ["*"],
                    "routes": _routes(policy, config),
                    "typed_per_filter_config": {"envoy.filters.http.cors": _cors(policy, config)},
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.grpc_web",
                "typed_config": {"@type": _TYPE + "filters.http.grpc_web.v3.GrpcWeb"},
            },
            {
                "name": "envoy.filters.http.cors",
                "typed_config": {"@type": _TYPE + "filters.http.cors.v3.Cors"},
            },
            {
                "name": "envoy.filters.http.local_ratelimit",
                "typed_config": {
                    "@type": _TYPE + "filters.http.local_ratelimit.v3.LocalRateLimit",
                    # No bucket here: only the sign-in routes' own configs limit.
                    "stat_prefix": "gateway",
                },
            },
            {"name": "envoy.filters.http.jwt_authn", "typed_config": _jwt_authn(policy, addresses)},
            {"name": "envoy.filters.http.rbac", "typed_config": _rbac(policy)},
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": _TYPE + "filters.http.router.v3.Router"},
            },
        ],
    }
    clusters = [
        _cluster(f"service_{name}", addresses.host, addresses.services[name], http2=True)
        for name in services
    ]
    clusters.append(_cluster(_IAM_KEYS, addresses.host, addresses.iam_http, http2=False))
    clusters.append(_cluster(_WEB_APP, "127.0.0.1", config.app_port, http2=False))
    return {
        # As istiod's bootstrap: the VirtualService's rpc-list regexes are larger than Envoy's
        # default RE2 program size limit (100).
        "layered_runtime": {
            "layers": [
                {
                    "name": "static",
                    "static_layer": {
                        "re2.max_program_size.error_level": 32768,
                        "re2.max_program_size.warn_level": 1024,
                    },
                }
            ]
        },
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": config.admin_port}}
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "mobile",
                    "address": {
                        "socket_address": {"address": config.host, "port_value": config.port}
                    },
                    **(
                        {
                            # `localhost` is ::1 first for some clients (Node's fetch): loopback
                            # on both families, as the printed http://localhost:<port> promises.
                            "additional_addresses": [
                                {
                                    "address": {
                                        "socket_address": {
                                            "address": "::1",
                                            "port_value": config.port,
                                        }
                                    }
                                }
                            ]
                        }
                        if ipv6_loopback and config.host == "127.0.0.1"
                        else {}
                    ),
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": manager,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": clusters,
        },
    }
