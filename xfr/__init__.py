"""betblock as an RPZ primary: the compiled policy served as RPZ zones over zone transfers."""
