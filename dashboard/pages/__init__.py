"""The dashboard's pages, one module each with its path, its layout and its callbacks: `ward` (`/`,
the ward overview and admitting a patient), `ward3d` (`/ward3d`) and `patient` (`/patient/<id>`,
the twin and every action on the patient). Each has `register(app, c)`, which
`dashboard.app.create_app` calls with the app's shared `dashboard.context.Context`; what the pages
draw comes from the pure builders beside them (dashboard.ward, dashboard.patient,
dashboard.body).

Shared by the pages with 3D figures: `GL_CONFIG`.
"""

# plotly.js draws 3D scenes at twice the pixel ratio by default (four times the pixels) whatever
# the display; at 1 a workstation without a GPU draws the animated body a quarter as hard, which
# is what kept values from reaching its screen in time (docs/performance.md).
GL_CONFIG = {"displaylogo": False, "plotGlPixelRatio": 1}
