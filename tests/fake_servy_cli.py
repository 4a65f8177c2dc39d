"""A stand-in for servy-cli that follows its documented behaviour (Servy's source, src/Servy.CLI:
Commands/RestartServiceCommand.cs, ServiceStatusCommand.cs, BaseCommand.cs, Models/
CommandResult.cs; Resources/Strings.resx), for the parts dagpg.services.servy uses:

  servy-cli status --name=NAME [--quiet]   stdout "Service status for 'NAME': STATUS", exit 0
                                           (NotInstalled for an unknown service)
  servy-cli restart --name=NAME [--quiet]  "Service 'NAME' restarted successfully." exit 0;
                                           stderr "The specified service was not found." exit 1

Services and their states come from the JSON file in $FAKE_SERVY_STATE ({"NAME": "Running"});
each call is appended to $FAKE_SERVY_STATE.calls.
"""

import json
import os
import sys

state_path = os.environ["FAKE_SERVY_STATE"]
with open(state_path + ".calls", "a", encoding="utf-8") as calls:
    calls.write(json.dumps(sys.argv[1:]) + "\n")
with open(state_path, encoding="utf-8") as f:
    services = json.load(f)
verb, *options = sys.argv[1:]
names = [o.split("=", 1)[1] for o in options if o.startswith("--name=")]
if not names:
    print("Service name is required.", file=sys.stderr)
    sys.exit(1)
name = names[0]
if verb == "status":
    print(f"Service status for '{name}': {services.get(name, 'NotInstalled')}")
    sys.exit(0)
if verb == "restart":
    if name not in services:
        print("The specified service was not found.", file=sys.stderr)
        sys.exit(1)
    services[name] = "Running"
    with open(state_path, "w", encoding="utf-8") as f:
        json.dump(services, f)
    print(f"Service '{name}' restarted successfully.")
    sys.exit(0)
print(f"unknown verb {verb}", file=sys.stderr)
sys.exit(1)
