"""`SuggestingInput`: an Input that completes what is typed from a list that arrives later (the image
references on the engine, `GET /images`). The rest of the first match shows dimmed after the cursor;
`right` (Textual's own) or `tab` takes it; `tab` with nothing to take moves on as usual."""

from __future__ import annotations

from collections.abc import Iterable

from textual.binding import Binding
from textual.suggester import Suggester
from textual.widgets import Input


class ListSuggester(Suggester):
    """Suggests the first of `choices` (in their order) that starts with the value typed; the
    choices can be replaced at any time (so no cache: a suggestion depends on the current list)."""

    def __init__(self, choices: Iterable[str] = ()) -> None:
        super().__init__(use_cache=False, case_sensitive=True)
        self.choices = list(choices)

    async def get_suggestion(self, value: str) -> str | None:
        return next((choice for choice in self.choices if choice.startswith(value) and choice != value), None)


class SuggestingInput(Input):
    BINDINGS = [Binding("tab", "accept_or_next", "Complete", show=False)]

    def __init__(self, value: str = "", **kwargs: object) -> None:
        self.choices = ListSuggester()
        super().__init__(value, suggester=self.choices, **kwargs)  # type: ignore[arg-type]

    def set_choices(self, choices: Iterable[str]) -> None:
        """New choices: the suggestion for what is typed now is looked up again."""
        self.choices.choices = list(choices)
        if self.value and self.has_focus:
            self.run_worker(self.choices._get_suggestion(self, self.value))

    @property
    def suggestion(self) -> str:
        """The completion shown now ("" when none)."""
        return self._suggestion if len(self._suggestion) > len(self.value) else ""

    def action_accept_or_next(self) -> None:
        if self.cursor_at_end and self.suggestion:
            self.value = self.suggestion
            self.cursor_position = len(self.value)
        else:
            self.screen.focus_next()
