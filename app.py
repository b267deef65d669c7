"""The workbench app: a thin router; every computation lives in the ``workbench`` library.

Run with ``workbench app RUN_DIR`` (or ``streamlit run app.py -- RUN_DIR``; without one the sidebar
starts from ``$WORKBENCH_RUN`` or ``runs/main``). ``RUN_DIR`` is a study folder (``workbench run`` /
``workbench eval``), one task of it, or a single trace run.
"""

import streamlit as st

from app_pages import shared

st.set_page_config(page_title="reasoning-neuron-workbench", layout="wide")
PAGES = [
    st.Page("app_pages/runs.py", title="Runs", default=True),
    st.Page("app_pages/trace.py", title="Trace viewer"),
    st.Page("app_pages/neuron.py", title="Neuron page"),
    st.Page("app_pages/fluctuation.py", title="Fluctuation patterns"),
    st.Page("app_pages/probes.py", title="Probes"),
    st.Page("app_pages/interventions.py", title="Interventions"),
]
page = st.navigation(PAGES)
shared.sidebar()
page.run()
