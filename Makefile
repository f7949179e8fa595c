# Two commands do all the set-up on a fresh machine:
#   make demo   create .venv, install, run the whole pipeline on a local Ray with built-in data
#   make test   create .venv, install, run the test suite
#   make soundfonts   (Debian/Ubuntu, as root) the SoundFonts for `grooves --soundfont` (README)
PYTHON ?= python3
VENV ?= .venv
DEMO_OUT ?= demo-output
BIN := $(VENV)/bin

.PHONY: install demo test bench rehearsal soundfonts clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt cluster/install.sh
	$(PYTHON) -m venv $(VENV)
	cluster/install.sh $(BIN)/python -e '.[dev]'
	touch $@

demo: install
	$(BIN)/cycledrums demo $(DEMO_OUT)

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/bench_codec.py

# The chain on a multi-node Ray over S3, all on 127.0.0.1 (benchmarks/rehearsal.py --help);
# e.g. make rehearsal REHEARSAL_ARGS="--scales 1 --kill-node prepare,evaluate,train"
rehearsal: install
	$(BIN)/python benchmarks/rehearsal.py $(REHEARSAL_ARGS)

# Drum kits and General MIDI banks for `cycledrums grooves --soundfont` (licenses: README, grooves).
# The SoundFont 2 form of MuseScore General: the renderer cannot play .sf3. Not needed by the tests.
SOUNDFONT_PACKAGES ?= fluid-soundfont-gm musescore-general-soundfont-lossless avldrums.lv2-soundfont
soundfonts:
	apt-get update && apt-get install -y --no-install-recommends $(SOUNDFONT_PACKAGES)
	ls -l /usr/share/sounds/sf2/FluidR3_GM.sf2 /usr/share/sounds/sf2/MuseScore_General_Full.sf2 \
	  /usr/share/sounds/sf2/Black_Pearl_4_LV2.sf2 /usr/share/sounds/sf2/Red_Zeppelin_4_LV2.sf2

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
