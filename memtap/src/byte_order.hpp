// Little-endian field access for memtap's file and wire formats: sf-common's codecs.
#pragma once

#include "sf-common/byte_order.hpp"

namespace sf::memtap {

using sf::get_le16;
using sf::get_le32;
using sf::get_le64;
using sf::put_le16;
using sf::put_le32;
using sf::put_le64;

}  // namespace sf::memtap
