"""The workbench app: a thin router; every computation lives in the ``workbench`` library.

Run with ``make app`` (or ``streamlit run app.py``).
"""

import streamlit as st

st.set_page_config(page_title="reasoning-neuron-workbench", layout="wide")
page = st.navigation([st.Page("app_pages/organism.py", title="Organism traces", default=True)])
page.run()
