"""WebAdmin: James's REST administration API (``conf/webadmin.properties``)."""
