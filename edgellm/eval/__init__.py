"""Task accuracy of a model: the multiple-choice tasks llama-perplexity scores, scored the same way, and exams
and word problems asked through the chat template.

    item.py      one item of a task file, and the error a malformed file raises
    tasks.py     the task files (HellaSwag lines, WinoGrande CSV, llama.cpp's binary multiple choice) and
                 llama-perplexity's rules for picking N of them
    exam_files.py  exam questions (C-Eval, CMMLU, MMLU CSV or JSONL) and GSM8K word problems
    mt19937.py   the C++ random numbers those rules draw
    score.py     one llama.cpp context that packs tasks into batches and scores every choice
    ask.py       exams and word problems asked through the model's chat template (the engine)
    results.py   what a run found: accuracy, standard errors, paired differences between levels, verdicts
    report.py    the results as a table, JSON and Markdown
    plot.py      accuracy against file size per level
"""
