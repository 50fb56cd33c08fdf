// Reads an ASAP XML file the way the MONAI Label QuPath extension does (javax.xml.parsers.DocumentBuilder
// from a default DocumentBuilderFactory; every <Annotation>'s "Name" and its <Coordinate> X/Y parsed as
// doubles) and prints what it read, one tab-separated record a line, for tests/java_xml.py:
//   ROOT <tag>
//   ATTR <attribute of <Annotations>> <value>       (values percent-encoded as UTF-8: tabs and newlines survive)
//   ANNOTATION <Name> <Type> <PartOfGroup> <number of coordinates> <x0,y0 x1,y1 ...>
// Exit status 0 when the file parses; a parse error is printed to stderr with exit status 1.
// Run as a single-file source program (Java 11+): java tests/java/ReadAsapXml.java FILE.xml

import java.io.File;
import java.io.PrintStream;
import java.net.URLEncoder;
import java.nio.charset.StandardCharsets;
import javax.xml.parsers.DocumentBuilder;
import javax.xml.parsers.DocumentBuilderFactory;
import org.w3c.dom.Document;
import org.w3c.dom.Element;
import org.w3c.dom.NamedNodeMap;
import org.w3c.dom.Node;
import org.w3c.dom.NodeList;

public class ReadAsapXml {
    private static String enc(String s) {
        return URLEncoder.encode(s == null ? "" : s, StandardCharsets.UTF_8);
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 1) {
            System.err.println("usage: java ReadAsapXml.java FILE.xml");
            System.exit(2);
        }
        PrintStream out = new PrintStream(System.out, true, StandardCharsets.UTF_8);
        Document doc;
        try {
            DocumentBuilder builder = DocumentBuilderFactory.newInstance().newDocumentBuilder();
            doc = builder.parse(new File(args[0]));
        } catch (Exception e) {
            System.err.println("PARSE ERROR: " + e.getMessage());
            System.exit(1);
            return;
        }
        out.println("ROOT\t" + doc.getDocumentElement().getTagName());
        NodeList groups = doc.getElementsByTagName("Annotations");
        if (groups.getLength() > 0) {
            NamedNodeMap attrs = groups.item(0).getAttributes();
            for (int i = 0; i < attrs.getLength(); i++) {
                Node a = attrs.item(i);
                out.println("ATTR\t" + enc(a.getNodeName()) + "\t" + enc(a.getNodeValue()));
            }
        }
        NodeList annotations = doc.getElementsByTagName("Annotation");
        for (int i = 0; i < annotations.getLength(); i++) {
            Element annotation = (Element) annotations.item(i);
            NodeList coordinates = annotation.getElementsByTagName("Coordinate");
            StringBuilder points = new StringBuilder();
            for (int k = 0; k < coordinates.getLength(); k++) {
                Element c = (Element) coordinates.item(k);
                double x = Double.parseDouble(c.getAttribute("X"));
                double y = Double.parseDouble(c.getAttribute("Y"));
                if (k > 0) {
                    points.append(' ');
                }
                points.append(x).append(',').append(y);
            }
            out.println("ANNOTATION\t" + enc(annotation.getAttribute("Name")) + "\t" + enc(annotation.getAttribute("Type"))
                    + "\t" + enc(annotation.getAttribute("PartOfGroup")) + "\t" + coordinates.getLength() + "\t" + points);
        }
    }
}
