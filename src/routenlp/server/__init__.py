"""HTTP serving: the OpenAI-compatible RouteNLP gateway and single-tier servers.

`tier_server.create_tier_app` serves one tier (`routenlp serve-tier`); `openai_schema`
holds the pydantic models of the chat-completions API subset both speak. Submodules are
imported on demand so `import routenlp.server` stays cheap.
"""
