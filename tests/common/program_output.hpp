// Test support: parsing what the example programs print (shared by the example reference
// tests and the mpirun-sf end-to-end tests; part of sf_test_support).
//   lines_of(text)    the lines of text, without their newlines
//   fields_of(line)   probe's "key=value key=value" fields (split on spaces, then at the first '=')
#pragma once

#include <map>
#include <string>
#include <vector>

namespace sf::test {

std::vector<std::string> lines_of(const std::string& text);
std::map<std::string, std::string> fields_of(const std::string& line);

}  // namespace sf::test
