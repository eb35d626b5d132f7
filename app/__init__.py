"""rnnlab's HTTP service. Loads exported weights from models/; never trains."""
