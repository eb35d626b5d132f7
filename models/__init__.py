"""Network definitions, preprocessing and the checkpoint format shared by training and serving.

Nothing here imports `app` or `training`: both of those import this package.
"""
