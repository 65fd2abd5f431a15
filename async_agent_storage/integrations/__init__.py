"""Adapters that let agent frameworks keep their sessions in any `SessionStore`.

One module per framework, each needing its framework installed (an extra of its own):

- `async_agent_storage.integrations.openai_agents` (extra ``openai-agents``): `StoreSession`, an
  OpenAI Agents SDK session.
- `async_agent_storage.integrations.agno` (extra ``agno``): `AgnoStoreDb`, an Agno ``AsyncBaseDb``.
- `async_agent_storage.integrations.adk` (extra ``adk``): `StoreSessionService`, a Google ADK
  session service.

Nothing is imported here, so importing this package costs nothing and needs no framework.
"""
