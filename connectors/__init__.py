"""Everything that talks to the outside: exported files, Log Analytics,
Defender advanced hunting, Microsoft Graph and the Sentinel incident API."""
