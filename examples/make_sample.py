"""Writes examples/sample_msgs.csv and sample_outcomes.csv: 300 short posts by 30 invented authors.

The text is generated here from the templates below (written for bertfeat, not taken from any
dataset). Younger authors lean to school and games, older ones to work and family, so an age
regression has a signal to find. Deterministic: rerunning gives the same files.
"""
import csv
import random
from pathlib import Path

YOUNG = ["My exam is tomorrow and I have not studied at all.", "We played video games until 3 a.m. again!",
         "Mom says I need to clean my room. Ugh.", "The new album from my favorite band drops Friday.",
         "Homework is due at noon. Why do teachers do this?", "Skateboarding with friends after class was fun.",
         "I can't wait for summer break. Only two more weeks!", "Got a new phone. The camera is amazing."]
MIDDLE = ["Work was busy today; three meetings before lunch.", "We finally painted the kitchen. It looks great.",
          "The kids had soccer practice, so dinner was late.", "Our mortgage rate went up again this year.",
          "I took Dr. Lee's advice and started running at 6 a.m. every day.",
          "Commuting in this traffic takes an hour each way.", "Planning a family trip to the lake in August.",
          "My manager asked me to lead the new project. Nervous but excited."]
OLDER = ["The grandchildren visited on Sunday. What a joy!", "My garden tomatoes are finally ripe.",
         "Retirement has given me time to read again.", "Went to the doctor for my knee; it is getting better.",
         "We celebrated our 35th anniversary at the old inn.", "I remember when gas cost less than a dollar.",
         "Volunteering at the library twice a week keeps me busy.", "Bird watching at dawn is my new hobby."]
FILLER = ["It rained all day.", "Coffee first, then everything else.", "Nothing much happened.",
          "Does anyone else feel tired on Mondays?", "Just a quick update.\nMore tomorrow."]


def main(out_dir=Path(__file__).parent):
    rng = random.Random(16)
    msgs, outcomes, mid = [], [], 1000
    for author in range(30):
        user_id = 5000 + author
        age = rng.randint(14, 70)
        pool = YOUNG if age < 25 else MIDDLE if age < 50 else OLDER
        outcomes.append((user_id, age, rng.choice(["female", "male"])))
        for _ in range(10):
            k = rng.randint(1, 4)
            text = " ".join(rng.choice(pool) if rng.random() < 0.75 else rng.choice(FILLER) for _ in range(k))
            mid += rng.randint(1, 3)
            msgs.append((mid, user_id, f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}", text))
    with open(out_dir / "sample_msgs.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["message_id", "user_id", "created_date", "message"])
        w.writerows(msgs)
    with open(out_dir / "sample_outcomes.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "age", "gender"])
        w.writerows(outcomes)


if __name__ == "__main__":
    main()
