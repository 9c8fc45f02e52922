// sfd: the guest agent, `sfd guest-agent`, PID 1 of a SnowFlock guest after the init script
// has set up the root overlay. Reads the command spec from the "sf.io" virtio-serial port,
// mounts the shared working directory, runs the command and sends back its output and exit
// status as frames (guest_io.hpp), then waits for the host to stop the VM.
#pragma once

namespace sf::sfd {

int guest_agent_main();

}  // namespace sf::sfd
