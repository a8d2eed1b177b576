"""Training domains (tasks). ``documents``: your own documents with questions (``task: documents``)."""
