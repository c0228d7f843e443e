"""`ServiceActions`: scale, rolling update, floating IP, delete and copy — for whichever service a
screen has at hand (the highlighted row of the list, or the service being viewed).

The dialogs check what is typed with the backend's `ServiceUpdate` model; the thin workers call the
client and hand the answer to the app; a failure becomes a notification with the server's message.
"""

from __future__ import annotations

from pydantic import ValidationError

from backend.models import Service, ServiceUpdate, field_errors
from tui.formatting import copyable_address
from tui.screens.base import ConsoleScreen
from tui.screens.delete import DeleteDialog
from tui.screens.prompt import PromptDialog


def update_problem(field: str, value: str, max_replicas: int) -> str | None:
    """What is wrong with `value` for `field` of an update request, or None."""
    data: dict[str, object] = {field: value.strip()}
    if field == "Replicas":
        text = value.strip()
        data[field] = int(text) if text.lstrip("-").isdigit() else text
    try:
        ServiceUpdate.model_validate(data, context={"max_replicas": max_replicas})
    except ValidationError as exc:
        return "; ".join(e.message for e in field_errors(exc))
    return None


class ServiceActions(ConsoleScreen):
    """The actions of a screen that has a service at hand; it says which via `target_service()`."""

    def target_service(self) -> Service | None:  # pragma: no cover - each screen overrides it
        raise NotImplementedError

    def _target_or_say(self) -> Service | None:
        service = self.target_service()
        if service is None:
            self.notify("No service selected", severity="warning")
        return service

    def action_scale(self) -> None:
        service = self._target_or_say()
        if service is None:
            return
        limit = self.app.max_replicas

        def done(value: str | None) -> None:
            if value is not None and int(value) != service.Replicas:
                self.run_update(service.Name, f"Scaling {service.Name} to {value}", Replicas=int(value))

        self.app.push_screen(
            PromptDialog(
                f"Scale {service.Name}",
                "Replicas",
                str(service.Replicas),
                f"Number of replicas, 1-{limit} (now {service.Replicas}).",
                lambda v: update_problem("Replicas", v, limit),
                confirm="Scale",
            ),
            done,
        )

    def action_update_image(self) -> None:
        service = self._target_or_say()
        if service is None:
            return

        def done(value: str | None) -> None:
            if value:
                self.run_update(service.Name, f"Rolling {service.Name} to {value}", Image=value)

        self.app.push_screen(
            PromptDialog(
                f"Rolling update of {service.Name}",
                "Image",
                service.Image,
                "Replicas are replaced one at a time; the image is pulled when missing.",
                lambda v: update_problem("Image", v, 100),
                confirm="Update",
            ),
            done,
        )

    def action_floating_ip(self) -> None:
        from tui.screens.fip import FloatingIPDialog

        service = self._target_or_say()
        if service is None:
            return

        def done(value: str | None) -> None:
            if value is None or value == service.FIP:
                return
            what = f"Attaching {value} to {service.Name}" if value else f"Detaching {service.FIP} from {service.Name}"
            self.run_update(service.Name, what, FIP=value)

        self.app.push_screen(FloatingIPDialog(service), done)

    def action_delete(self) -> None:
        service = self._target_or_say()
        if service is None:
            return

        def done(answer: tuple[bool, bool] | None) -> None:
            if answer and answer[0]:
                self.run_delete(service.Name, answer[1])

        self.app.push_screen(DeleteDialog(service.Name, service.Replicas), done)

    def action_copy_address(self) -> None:
        service = self._target_or_say()
        if service is None:
            return
        text = copyable_address(service)
        if not text:
            self.notify("The service has no address yet", severity="warning")
            return
        self.app.copy_to_clipboard(text)
        self.notify(f"Copied {text}", timeout=3)

    # -- workers -----------------------------------------------------------------------------

    def run_update(self, name: str, what: str, **changes: object) -> None:
        """Run on the app, so leaving this screen does not cancel it."""
        app = self.app

        async def update() -> None:
            app.notify(f"{what}…", timeout=3)
            app.remember(await app.client.update_service(name, **changes))

        app.run_worker(update(), group="action", exit_on_error=False)

    def run_delete(self, name: str, keep: bool) -> None:
        app = self.app

        async def delete() -> None:
            app.notify(f"Deleting {name}{' (keeping its containers)' if keep else ''}…", timeout=3)
            if await app.client.delete_service(name, keep=keep):
                app.notify(f"{name} was deleted already", timeout=4)
            # Otherwise the backend tears it down now: its row shows `deleting`, and goes when the
            # `deleted` event comes.

        app.run_worker(delete(), group="action", exit_on_error=False)
