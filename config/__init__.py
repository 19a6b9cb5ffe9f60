"""betblock configuration: the typed settings tree (``config.settings``) and the default files."""
