"""HTTP serving: the OpenAI-compatible RouteNLP gateway and single-tier servers.

`gateway.create_app` is the routed gateway (`routenlp serve`), over a `runtime.ServingState`
(all artifact loading) with `breaker`, `security` (auth and limits, shared with
`serve-tier`), `logwriter` (group-commit request logging) and `metrics`;
`tier_server.create_tier_app` serves one tier (`routenlp serve-tier`); `openai_schema`
holds the pydantic models of the chat-completions API subset both speak; `upstream` is a
fast fake upstream for `bench gateway` (`bench`) and tests. Submodules are imported on
demand so `import routenlp.server` stays cheap.
"""
