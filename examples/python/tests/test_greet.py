import io
import unittest
from contextlib import redirect_stdout

from greet import greet, main


class GreetTest(unittest.TestCase):
    def test_a_name_is_greeted(self):
        self.assertEqual(greet("hm"), "Hello, hm.")

    def test_excitement_shows(self):
        self.assertEqual(greet(" hm ", excited=True), "Hello, hm!")

    def test_an_empty_name_is_refused(self):
        with self.assertRaises(ValueError):
            greet("   ")

    def test_the_command_line_greets_everyone_named(self):
        out = io.StringIO()
        with redirect_stdout(out):
            self.assertEqual(main(["--excited", "a", "b"]), 0)
        self.assertEqual(out.getvalue(), "Hello, a!\nHello, b!\n")


if __name__ == "__main__":
    unittest.main()
