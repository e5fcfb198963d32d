"""Runtime environments: ship a project folder and a helper package to the
workers, set environment variables, and give one actor an environment of its own."""

import os
import shutil
import tempfile

import zray as ray

# A small project made on the fly: a module, a data file, and a log to leave out.
project = tempfile.mkdtemp(prefix="zray-example-project-")
with open(os.path.join(project, "scoring.py"), "w") as f:
    f.write("def score(word):\n    return sum(ord(c) - 96 for c in word)\n")
with open(os.path.join(project, "words.txt"), "w") as f:
    f.write("apple\nbanana\ncherry\n")
with open(os.path.join(project, "debug.log"), "w") as f:
    f.write("not needed on the workers\n")

# A package the workers import by name (py_modules ships the folder itself).
modules = tempfile.mkdtemp(prefix="zray-example-modules-")
os.makedirs(os.path.join(modules, "greetings"))
with open(os.path.join(modules, "greetings", "__init__.py"), "w") as f:
    f.write("def hello(name):\n    return f'hello, {name}'\n")

# The job's environment: every task and actor runs in a copy of the project.
ray.init(num_cpus=2, runtime_env={"working_dir": project, "excludes": ["*.log"]})


@ray.remote
def score_words():
    import scoring  # from the working_dir, which is also the current folder

    with open("words.txt") as f:
        words = f.read().split()
    return {w: scoring.score(w) for w in words}, os.path.exists("debug.log")


scores, log_shipped = ray.get(score_words.remote())
print("scores:", scores)
assert scores == {"apple": 50, "banana": 33, "cherry": 77}
assert not log_shipped


# A task's own keys add to the job's: here a package and an environment variable.
@ray.remote(runtime_env={"py_modules": [os.path.join(modules, "greetings")],
                         "env_vars": {"GREETING_NAME": "zray"}})
def greet():
    import greetings

    return greetings.hello(os.environ["GREETING_NAME"])


print(ray.get(greet.remote()))
assert ray.get(greet.remote()) == "hello, zray"


# An actor with its own environment variables, set for its whole life.
@ray.remote
class Config:
    def mode(self):
        return os.environ.get("APP_MODE", "default")


actor = Config.options(runtime_env={"env_vars": {"APP_MODE": "batch"}}).remote()
print("actor mode:", ray.get(actor.mode.remote()))
assert ray.get(actor.mode.remote()) == "batch"

ray.shutdown()
shutil.rmtree(project)
shutil.rmtree(modules)
