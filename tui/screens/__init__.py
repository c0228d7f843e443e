"""The console's screens: services (home), service, create form, help, and the action dialogs."""
