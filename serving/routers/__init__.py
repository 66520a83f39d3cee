"""The service's routes, one module per resource. Each route's logic is a plain function
of validated inputs and the state; a module's ``router(...)`` binds them to paths with
the schema the settings and the artifact call for."""
