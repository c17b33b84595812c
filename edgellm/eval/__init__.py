"""Task accuracy of a model: the multiple-choice tasks llama-perplexity scores, scored the same way.

    tasks.py     the task files (HellaSwag lines, WinoGrande CSV, llama.cpp's binary multiple choice) and
                 llama-perplexity's rules for picking N of them
    mt19937.py   the C++ random numbers those rules draw
    score.py     one llama.cpp context that packs tasks into batches and scores every choice
    results.py   what a run found: accuracy, standard errors, paired differences between levels, verdicts
    report.py    the results as a table, JSON and Markdown
"""
