"""Screens pushed over the chat: settings, model picker, help, errors, prompts."""
