"""The command line's implementation; its entry point is `async_agent_storage.cli`.

Built on the public API only (`open_store`, the `SessionStore` methods, the models and errors),
like any other program that uses a store.
"""
