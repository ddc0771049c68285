"""Short chat prompts shared by the tests (Hugging Face parity) and the benchmarks (load test)."""

CHAT_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain recursion in one sentence.",
    "List three prime numbers.",
    "How do I list files in bash?",
    "What is 17 times 23?",
    "Translate 'good morning' to Spanish.",
    "Give me a tip for writing clean Python code.",
    "Why is the sky blue?",
    "Name a sorting algorithm and its complexity.",
    "What does HTTP stand for?",
    "Describe a cat in five words.",
]
