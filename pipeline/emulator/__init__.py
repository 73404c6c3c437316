"""GigaChat API emulator: a real local HTTP(S) server that Sber's SDK and the project's client both accept.

Shares no code with pipeline.providers: both follow shared/docs/gigachat-api.md, so a misreading fails a test.
"""

from .profile import EmulatorProfile
from .server import RunningEmulator, start_emulator, start_emulator_process

__all__ = ["EmulatorProfile", "RunningEmulator", "start_emulator", "start_emulator_process"]
