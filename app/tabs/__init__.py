"""The Studio's tabs, one module each: the tab's handlers (plain functions of the AppContext, no
Gradio objects in or out; the tests call them) and its section of the Blocks with its events.

Every write and job checks `AppContext.require(action, username)` in the handler, so UI events, the
documented API and raw queue calls meet the same check (app/permissions.py is the table). Image
paths handed out are only files under DATA_DIR/images or assets/. app/ui.py assembles the tabs.
"""
