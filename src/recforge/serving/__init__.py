"""Serving: a framework-free `RecommenderService` and the FastAPI app around it."""
